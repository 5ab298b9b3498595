-- stored_bytes: a tenant's counters (keys.tenant_counts: one hash), read with one HMGET and
-- written with one HSET by the script that changes them (account_load, then account_save):
-- its backlog ('pending') and its storage budget (max_stored_bytes), counted in O(1), no scans.
-- A record counts its bytes (its field 'storedBytes') in exactly one place:
--   'held': records with no expiry, i.e. jobs not yet final and dead letters; +bytes when
--     admitted, moved out when the record starts to expire;
--   the retained buckets: records expiring after the retention, added to the bucket (field
--     'b<n>', n = floor(now / STORED_BUCKET_SECONDS)) in which their retention started, with a
--     running 'total' and the 'oldest' bucket still counted. A bucket leaves once every record
--     in it has expired: at most one bucket's length (an hour) after the last of them did, so
--     the budget over-counts a finished job by at most that long.
-- The same hash keeps the tenant's listing index's 'newest' score and the 'seq' counter of
-- its ready sets (admit_one). Inside a script nothing else writes it, so the values read
-- once and written back once are exact.
-- Included by admit_one (the check), final_transition, forget_dead_letter (the moves).
local STORED_BUCKET_SECONDS = 3600

-- Drop the buckets whose records have all expired at now (epoch s): bucket b's last record
-- expires before (b + 1) * length + retention. Returns the retained total and the oldest
-- bucket still counted (nil: none), and whether any left; the caller writes both back
-- (account_save).
-- Steps bucket by bucket from the oldest: a bucket's worth of work per bucket that leaves;
-- far behind (a tenant idle for long, a skewed clock), it prunes by the fields present.
local function retained_prune(key, total, oldest, now, retention)
  local stale = math.floor((now - retention) / STORED_BUCKET_SECONDS) - 1  -- newest bucket all expired
  if not oldest or oldest > stale then return total, oldest, false end
  if stale - oldest > 256 then
    local fields, left = redis.call('HGETALL', key), nil
    for i = 1, #fields, 2 do
      local bucket = tonumber(string.match(fields[i], '^b(%-?%d+)$') or '')
      if bucket and bucket <= stale then
        total = total - tonumber(fields[i + 1])
        redis.call('HDEL', key, fields[i])
      elseif bucket and (not left or bucket < left) then
        left = bucket
      end
    end
    return total, left or stale + 1, true
  end
  while oldest <= stale do
    total = total - tonumber(redis.call('HGET', key, 'b' .. oldest) or '0')
    redis.call('HDEL', key, 'b' .. oldest)
    oldest = oldest + 1
  end
  return total, oldest, true
end

-- The tenant's counters at now (one HMGET, with the bucket of now; the retained buckets
-- that left are dropped).
local function account_load(key, now, retention)
  local bucket = math.floor(now / STORED_BUCKET_SECONDS)
  local f = redis.call('HMGET', key, 'pending', 'held', 'total', 'oldest', 'newest', 'seq', 'b' .. bucket)
  local a = {key = key, pending = tonumber(f[1] or '0'), held = tonumber(f[2] or '0'),
             newest = tonumber(f[5] or ''), seq = tonumber(f[6] or ''),
             bucket = bucket, bucket_bytes = tonumber(f[7] or '0'), retained = false}
  -- dirty: something to write back (account_save), here buckets that left
  a.total, a.oldest, a.dirty = retained_prune(key, tonumber(f[3] or '0'), tonumber(f[4] or ''), now, retention)
  return a
end

-- Everything the tenant's records count: held plus retained.
local function account_used(a)
  return a.held + a.total
end

-- A record of `bytes` starts to expire now (a.bucket): it leaves held for that bucket.
local function account_retain(a, bytes)
  if bytes == 0 then return end
  a.held = a.held - bytes
  a.total = a.total + bytes
  a.bucket_bytes, a.retained = a.bucket_bytes + bytes, true
  if not a.oldest or a.bucket < a.oldest then a.oldest = a.bucket end
end

-- Write the counters back: one HSET.
local function account_save(a)
  local set = {'pending', string.format('%d', a.pending), 'held', string.format('%d', a.held),
               'total', string.format('%d', a.total)}
  if a.oldest then set[#set + 1], set[#set + 2] = 'oldest', string.format('%d', a.oldest) end
  if a.newest then set[#set + 1], set[#set + 2] = 'newest', string.format('%.17g', a.newest) end
  if a.seq then set[#set + 1], set[#set + 2] = 'seq', string.format('%d', a.seq) end
  if a.retained then set[#set + 1], set[#set + 2] = 'b' .. a.bucket, string.format('%d', a.bucket_bytes) end
  redis.call('HSET', a.key, unpack(set))
end

-- Seconds until the oldest retained bucket of the tenant leaves (0: none is counted).
local function account_release_in(a, now, retention)
  if not a.oldest then return 0 end
  return math.max(1, math.ceil((a.oldest + 1) * STORED_BUCKET_SECONDS + retention - now))
end
