-- finalize: the one way into a final state (succeeded, dead, cancelled).
-- KEYS[1] the job hash   KEYS[2] the watch zset   KEYS[3] the tenant's dead letters
-- KEYS[4] the tenant's counts (stored_bytes)
-- ARGV[1] the final state   ARGV[2] finishedAt (ISO time)   ARGV[3] result (JSON, '' = none)
-- ARGV[4] error (JSON, '' = none)   ARGV[5] retention (s)   ARGV[6] job id   ARGV[7] now (epoch ms)
-- ARGV[8] from: 'attempt' | 'orphan' (lease lapsed) | 'waiting' | 'replayed' (queued, not claimed)
-- ARGV[9] attempt   ARGV[10] cycle
-- ARGV[11] the tenant's max dead letters   ARGV[12] how long a dead letter is kept (ms)
-- ARGV[13] the tenant's storage budget (bytes) a result must fit in (0: no check)
-- KEYS[5..11], ARGV[14..17] (optional): the job's queue to dispatch (includes/dispatch.lua), so
-- the attempt that ends hands its place to the next job in the same call
-- Reply: 1, or 0 when the job is not where ARGV[8] says (nothing changes).
--@include job_states
--@include final_transition
--@include dispatch

local spec = dispatch_spec(5, 14)
local function done(reply)
  if spec then dispatch(spec) end
  return reply
end

local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle', 'leaseUntil', unpack(FINAL_READ))
local state, from = f[1], ARGV[8]
if not state then return done(0) end
if from == 'waiting' then
  if not WAITING_STATES[state] then return done(0) end
elseif from == 'replayed' then
  if state ~= 'queued' or tonumber(f[2] or '0') ~= 0
     or tonumber(f[3] or '0') ~= tonumber(ARGV[10]) then return done(0) end
else
  if state ~= 'running' or tonumber(f[2] or '0') ~= tonumber(ARGV[9])
     or tonumber(f[3] or '0') ~= tonumber(ARGV[10]) then return done(0) end
  if from == 'orphan' and tonumber(f[4] or '0') * 1000 > tonumber(ARGV[7]) then return done(0) end
end
final_transition(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[1], ARGV[2], ARGV[3],
                 ARGV[4], ARGV[5], ARGV[7], ARGV[11], ARGV[12], ARGV[13],
                 {f[5], f[6], f[7], f[8], f[9], f[10], f[11]})
return done(1)
