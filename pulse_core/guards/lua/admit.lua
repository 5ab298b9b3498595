-- admit: idempotency, jobType, rate limit, backlog, storage budget and the job record in one
-- step, for one job (admit_batch does many in one call).
-- KEYS and ARGV as admit_one lays them out, with one job (ARGV[9] = 1):
-- KEYS[1..5] the tenant's shared keys, KEYS[6..5+n] its rate windows, then the job's 14 keys;
-- ARGV[1..9] the shared arguments, ARGV[10..9+2n] the windows, then the job's arguments.
-- Reply: the job's reply as admit_one gives it ({'created', stats} | {'replay', stats, record}
--   | {'conflict', stats, job id} | {'unknown-type', stats} | {'rate-limited', stats}
--   | {'backlog', stats, pending} | {'storage', stats, used, bytes, release in}).
--@include admit_one

local ctx = admission_context()
local reply = admit_one(ctx, ctx.first_key, ctx.first_arg)
dispatch_admitted(ctx)
return reply
