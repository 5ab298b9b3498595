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

-- The retained bytes still counted at now (epoch s), dropping the buckets whose records
-- have all expired (retention s after the bucket's end).
local function retained_bytes(retained_key, now, retention)
  local f = redis.call('HMGET', retained_key, 'total', 'oldest')
  local total, oldest = tonumber(f[1] or '0'), tonumber(f[2] or '')
  if not oldest then return total end
  local moved = false
  while (oldest + 1) * STORED_BUCKET_SECONDS + retention <= now do
    total = total - tonumber(redis.call('HGET', retained_key, 'b' .. oldest) or '0')
    redis.call('HDEL', retained_key, 'b' .. oldest)
    oldest, moved = oldest + 1, true
  end
  if moved then
    redis.call('HSET', retained_key, 'total', string.format('%d', total), 'oldest', oldest)
  end
  return total
end

-- Everything the tenant's records count now: held plus retained.
local function stored_bytes_used(held_key, retained_key, tenant, now, retention)
  return tonumber(redis.call('HGET', held_key, tenant) or '0') + retained_bytes(retained_key, now, retention)
end

-- A record of `bytes` starts to expire now (retention s): it leaves held for the current bucket.
local function stored_bytes_retain(held_key, retained_key, tenant, now, retention, bytes)
  if bytes == 0 then return end
  redis.call('HINCRBY', held_key, tenant, string.format('%d', -bytes))
  retained_bytes(retained_key, now, retention)  -- drop what left first, so 'oldest' is live
  local bucket = math.floor(now / STORED_BUCKET_SECONDS)
  redis.call('HINCRBY', retained_key, 'b' .. bucket, string.format('%d', bytes))
  redis.call('HINCRBY', retained_key, 'total', string.format('%d', bytes))
  if not redis.call('HGET', retained_key, 'oldest') then redis.call('HSET', retained_key, 'oldest', bucket) end
  -- the hash ends with the last record counted in it
  redis.call('EXPIRE', retained_key, retention + 2 * STORED_BUCKET_SECONDS)
end
