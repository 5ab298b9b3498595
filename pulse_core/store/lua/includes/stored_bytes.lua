-- stored_bytes: a tenant's storage budget (max_stored_bytes) counted in O(1), no scans.
-- A record counts its bytes (its field 'storedBytes') in exactly one place:
--   held_key (one hash, tenant -> bytes): records with no expiry, i.e. jobs not yet final and
--     dead letters; +bytes when admitted, moved out when the record starts to expire;
--   retained_key (one hash per tenant): records expiring after the retention, added to the
--     bucket (field 'b<n>', n = floor(now / STORED_BUCKET_SECONDS)) in which their retention
--     started, with a running 'total' and the 'oldest' bucket still counted. A bucket leaves
--     once every record in it has expired: at most one bucket's length (an hour) after the
--     last of them did, so the budget over-counts a finished job by at most that long.
-- Included by admit_one (the check), final_transition, forget_dead_letter (the moves).
local STORED_BUCKET_SECONDS = 3600

-- The retained bytes still counted at now (epoch s) and the oldest bucket still counted (nil:
-- none), dropping the buckets whose records have all expired (bucket b's last record
-- expires before (b + 1) * length + retention).
-- Steps bucket by bucket from the oldest: a bucket's worth of work per bucket that leaves;
-- far behind (a tenant idle for long, a skewed clock), it prunes by the fields present.
local function retained_bytes(retained_key, now, retention)
  local f = redis.call('HMGET', retained_key, 'total', 'oldest')
  local total, oldest = tonumber(f[1] or '0'), tonumber(f[2] or '')
  local stale = math.floor((now - retention) / STORED_BUCKET_SECONDS) - 1  -- newest bucket all expired
  if not oldest or oldest > stale then return total, oldest end
  if stale - oldest > 256 then
    local fields, left = redis.call('HGETALL', retained_key), nil
    for i = 1, #fields, 2 do
      local bucket = tonumber(string.match(fields[i], '^b(%-?%d+)$') or '')
      if bucket and bucket <= stale then
        total = total - tonumber(fields[i + 1])
        redis.call('HDEL', retained_key, fields[i])
      elseif bucket and (not left or bucket < left) then
        left = bucket
      end
    end
    oldest = left or stale + 1
  else
    while oldest <= stale do
      total = total - tonumber(redis.call('HGET', retained_key, 'b' .. oldest) or '0')
      redis.call('HDEL', retained_key, 'b' .. oldest)
      oldest = oldest + 1
    end
  end
  redis.call('HSET', retained_key, 'total', string.format('%d', total), 'oldest', oldest)
  return total, oldest
end

-- Everything the tenant's records count now: held plus retained.
local function stored_bytes_used(held_key, retained_key, tenant, now, retention)
  return tonumber(redis.call('HGET', held_key, tenant) or '0') + retained_bytes(retained_key, now, retention)
end

-- A record of `bytes` starts to expire now (retention s): it leaves held for the current bucket.
local function stored_bytes_retain(held_key, retained_key, tenant, now, retention, bytes)
  if bytes == 0 then return end
  redis.call('HINCRBY', held_key, tenant, string.format('%d', -bytes))
  -- drop what left first, so 'oldest' is live; then the total and the oldest in one write
  -- (the same commands for a tenant's first retained record as for its next ones)
  local total, oldest = retained_bytes(retained_key, now, retention)
  local bucket = math.floor(now / STORED_BUCKET_SECONDS)
  redis.call('HINCRBY', retained_key, 'b' .. bucket, string.format('%d', bytes))
  if not oldest or bucket < oldest then oldest = bucket end
  local new_total = string.format('%d', total + bytes)
  redis.call('HSET', retained_key, 'total', new_total, 'oldest', oldest)
  -- the hash ends with the last record counted in it
  redis.call('EXPIRE', retained_key, retention + 2 * STORED_BUCKET_SECONDS)
end
