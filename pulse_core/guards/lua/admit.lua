-- admit: idempotency, jobType, rate limit, backlog, storage budget and the job record in one
-- step, for one job (admit_batch does many in one call).
-- KEYS and ARGV as admit_one lays them out, with one job (ARGV[9] = 1):
-- KEYS[1..3] the tenant's shared keys, KEYS[4..3+n] its rate windows, then the job's 13 keys;
-- ARGV[1..9] the shared arguments, ARGV[10..9+2n] the windows, then the job's arguments.
-- Reply: the job's reply as admit_one gives it ({'created', stats} | {'replay', stats, record}
--   | {'conflict', stats, job id} | {'unknown-type', stats} | {'rate-limited', stats}
--   | {'backlog', stats, pending} | {'storage', stats, used, bytes, release in}).
--@include admit_one

local ctx = admission_context()
local reply = admit_one(ctx, ctx.first_key, ctx.first_arg)
finish_admission(ctx)
return reply
