-- admit_batch: admit many jobs of one tenant in request order, each exactly as admit would
-- (all-or-nothing per job: a refused job consumes nothing; the rate limit counts each job
-- let in, so later jobs see the slots earlier ones took; two jobs with one idempotency key:
-- the second replays the first).
-- KEYS and ARGV as admit_one lays them out: KEYS[1..3] the tenant's shared keys,
-- KEYS[4..3+n] its rate windows, then 13 keys per job; ARGV[1..9] the shared arguments
-- (ARGV[9] the number of jobs m), ARGV[10..9+2n] the windows, then each job's arguments.
-- Reply: m replies, each as admit answers for one job, in order.
-- Safe to run twice: each job already stored answers 'created' again and changes nothing.
--@include admit_one

local ctx = admission_context()
local replies, a = {}, ctx.first_arg
for i = 1, ctx.count do
  replies[i], a = admit_one(ctx, ctx.first_key + 13 * (i - 1), a)
end
finish_admission(ctx)
return replies
