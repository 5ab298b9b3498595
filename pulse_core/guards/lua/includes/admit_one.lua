-- admit_one: the admission of one job (idempotency, jobType, rate limit, backlog, storage
-- budget, then the record), shared by admit (one job) and admit_batch (many, in order).
-- KEYS and ARGV are laid out alike for both (admission_context reads the shared part):
-- KEYS[1] the tenant index   KEYS[2] the tenant's counts (pending, storage budget, the index's
-- newest score, the ready sets' arrival counter: includes/stored_bytes.lua, read once and
-- written once per run)   KEYS[3] the watch zset   KEYS[4..3+n] the tenant's
-- rate windows (GCRA); then 13 keys per job (a key a job does not use is its job hash): the job
-- hash, the idempotency key, the broker list of the job's queue and priority, the tenant's
-- ready set of the queue, the queue's dispatch keys (active tenants, dispatch state, queues
-- with waiting jobs, its four broker lists: includes/dispatch.lua), the due
-- set and the parked messages (a delayed job's message waits there: release_due).
-- ARGV[1] tenant id   ARGV[2] idempotency key TTL (s)   ARGV[3] max pending
-- ARGV[4] job key prefix   ARGV[5] number of windows n   ARGV[6] the index horizon (ms):
-- entries created longer ago are trimmed, once per hundredth of it (their records have
-- expired after their retention, or are dead letters listed there)   ARGV[7] the tenant's storage budget (bytes)
-- ARGV[8] retention (s)   ARGV[9] number of jobs m   ARGV[10..9+2n] n (limit, expiry) pairs;
-- then per job: job id, created (epoch ms), fingerprint ('' = no key), jobType live '1'/'0',
-- the broker message, in how many seconds (Redis' clock) the sweep looks at the job if
-- nothing claimed it, what becomes of the message (the mode: 'push' onto the broker list;
-- 'enqueue' into the ready set (the message into the record), then the queue is dispatched; 'wait' into the ready set
-- without a message, for the workers to take and publish (a broker other than this Redis);
-- 'park' until due, without a message for the worker that releases it to publish (a broker
-- other than this Redis); '' nothing: the caller publishes), the queue, its ready prefix, the job
-- key prefix, the dispatch depth, the job's priority, the tenant's weight, in how many
-- seconds a parked job is due, the number f of field/value entries, then the record's f
-- field/value entries.
-- A job's reply: {outcome, stats, ...} with stats as window_stats returns it:
--   {'created', stats} | {'replay', stats, record} | {'conflict', stats, job id}
--   | {'unknown-type', stats} | {'rate-limited', stats} | {'backlog', stats, pending}
--   | {'storage', stats, bytes used, the job's bytes, seconds until some bytes are released}
-- Safe to run twice (redis-py retries a call that timed out): a job id already stored
-- answers 'created' and changes nothing.
--@include rate_windows
--@include listing_add
--@include stored_bytes
--@include enqueue_job

local function admission_context()
  local time = redis.call('TIME')
  local n = tonumber(ARGV[5])
  return {
    now = tonumber(time[1]) + tonumber(time[2]) / 1000000,
    tenant = ARGV[1], ttl = ARGV[2], max_pending = tonumber(ARGV[3]), prefix = ARGV[4],
    n = n, horizon = tonumber(ARGV[6]), budget = tonumber(ARGV[7]), retention = tonumber(ARGV[8]),
    count = tonumber(ARGV[9]),
    -- the queues that jobs of this run wait for (dispatched once each, at the end of the run)
    to_dispatch = {}, dispatch_order = {},
    index = KEYS[1], counts = KEYS[2], watch = KEYS[3],
    -- the tenant's counters (account_load), read by the first job that needs them
    account = nil,
    -- where the first job's KEYS and ARGV start
    first_key = 4 + n, first_arg = 10 + 2 * n,
  }
end

-- Where the job's message goes (the mode, above): the one place admission sends a message.
-- Runs before the record is written (nothing outside the script sees the order). Returns the
-- dispatch spec of the queue whose ready set the job is to wait in (nil: it does not wait
-- there); a message that waits there is written into the record (its field 'message').
local function place_message(ctx, k, a, job_id, message, mode)
  if mode == 'push' then
    redis.call('LPUSH', KEYS[k + 2], message)
  elseif mode == 'enqueue' then
    local q = dispatch_spec(k + 4, a + 7)
    q.counted = 1  -- the first list only (includes/dispatch.lua says why)
    local placed = dispatch_straight(q, message)
    if placed == 'pushed' then return nil end
    if placed == 'behind' and not ctx.to_dispatch[q.queue] then
      ctx.to_dispatch[q.queue] = q
      ctx.dispatch_order[#ctx.dispatch_order + 1] = q.queue
    end
    return q
  elseif mode == 'wait' then
    return dispatch_pop_spec(k + 4, a + 7)
  elseif mode == 'park' then
    redis.call('ZADD', KEYS[k + 11], string.format('%.6f', ctx.now + tonumber(ARGV[a + 13])), job_id)
    -- no message (a broker other than this Redis): no list either, the releasing worker publishes it
    redis.call('HSET', KEYS[k + 12], job_id, (message == '' and '' or KEYS[k + 2]) .. '\n' .. message)
  end
  return nil
end

-- The end of a run: the tenant's counters written back (once, if anything changed them), then
-- each queue a job of this run waits for dispatched, once, in the order they came (each has
-- an active tenant: the job's own, just placed in its ready set).
local function finish_admission(ctx)
  if ctx.account and ctx.account.dirty then account_save(ctx.account) end
  for _, queue in ipairs(ctx.dispatch_order) do dispatch(ctx.to_dispatch[queue], true) end
end

-- Admit the job whose keys start at KEYS[k] and whose arguments start at ARGV[a]:
-- its reply and where the next job's arguments start.
local function admit_one(ctx, k, a)
  local job_key, idem_key = KEYS[k], KEYS[k + 1]
  local job_id, created_ms, fp, live = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local message, watch_in, mode = ARGV[a + 4], tonumber(ARGV[a + 5]), ARGV[a + 6]
  local f = tonumber(ARGV[a + 14])
  local fields, next_arg = a + 15, a + 15 + f
  local stats = window_stats(ctx.now, 4, 10, ctx.n)

  -- The same call again (redis-py retries a call that timed out): it was done already.
  if redis.call('EXISTS', job_key) == 1 then return {'created', stats}, next_arg end

  if fp ~= '' then
    local seen = redis.call('GET', idem_key)
    if seen then
      local seen_fp, seen_id = string.match(seen, '^(%S+) (%S+)$')
      local record = redis.call('HGETALL', ctx.prefix .. seen_id)
      if #record > 0 then
        if seen_fp ~= fp then return {'conflict', stats, seen_id}, next_arg end
        return {'replay', stats, record}, next_arg
      end
      redis.call('DEL', idem_key)  -- the job's record is gone: the key is stale
    end
  end
  if live ~= '1' then return {'unknown-type', stats}, next_arg end
  if stats[5] == '1' then return {'rate-limited', stats}, next_arg end
  -- read once per run: nothing else writes them while the script runs, so each job admitted
  -- adds to them, and finish_admission writes them back
  ctx.account = ctx.account or account_load(ctx.counts, ctx.now, ctx.retention)
  local account = ctx.account
  if account.pending >= ctx.max_pending then return {'backlog', stats, account.pending}, next_arg end
  -- the record's bytes as stored: every field and value
  local bytes = 0
  for i = fields, next_arg - 1 do bytes = bytes + #ARGV[i] end
  local used = account_used(account)
  if used + bytes > ctx.budget then
    return {'storage', stats, used, bytes, account_release_in(account, ctx.now, ctx.retention)}, next_arg
  end

  window_acquire(ctx.now, 4, 10, ctx.n)
  stats[2] = stats[2] - 1
  local waits = place_message(ctx, k, a, job_id, message, mode)
  if waits and message ~= '' then
    -- the message waits in the record (not counted in its bytes: dispatch takes it out)
    redis.call('HSET', job_key, 'message', message, 'recordBytes', bytes, 'storedBytes', bytes,
               unpack(ARGV, fields, next_arg - 1))
  else
    redis.call('HSET', job_key, 'recordBytes', bytes, 'storedBytes', bytes, unpack(ARGV, fields, next_arg - 1))
  end
  account.held, account.pending, account.dirty = account.held + bytes, account.pending + 1, true
  redis.call('ZADD', ctx.watch, ctx.now + watch_in, job_id)
  -- the index is trimmed by the first admission of each step of creation time (a hundredth
  -- of the horizon: 1 h 41 min for 7 days), not by every one (an empty index has nothing to
  -- trim): after an admission it holds nothing older than the horizon plus one step
  -- the index's newest score is the one the counts keep (every writer of the index keeps it
  -- there; nil: the tenant's first job)
  local newest = account.newest
  account.newest = listing_add(ctx.index, created_ms, job_id, newest or false)
  local step = math.max(1, math.floor(ctx.horizon / 100))
  if newest and math.floor(newest / step) ~= math.floor(tonumber(created_ms) / step) then
    redis.call('ZREMRANGEBYSCORE', ctx.index, '-inf', '(' .. (tonumber(created_ms) - ctx.horizon))
  end
  if fp ~= '' then
    redis.call('SET', idem_key, fp .. ' ' .. job_id, 'EX', ctx.ttl)
  end
  if waits then
    account.seq = (account.seq or 0) + 1
    enqueue_job(waits, KEYS[k + 3], job_id, ctx.tenant, ARGV[a + 11], ARGV[a + 12], account.seq)
  end
  return {'created', stats}, next_arg
end
