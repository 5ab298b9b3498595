-- dispatch: move a queue's waiting jobs onto its broker lists in weighted fair order while
-- the lists hold fewer than `depth` messages (pulse_core.store.dispatch).
-- q.lists: the queue's broker lists, one per kombu priority step (0, 3, 6, 9) in that order: all
--   count towards the depth; dispatched messages all go onto the first, first in first out, so
--   the order of dispatch is the order workers take them (a broker priority band would let a
--   tenant's priority-9 message overtake another tenant's dispatched earlier, again and again)
-- q.active: tenants by virtual time   q.state: the dispatcher's hash
-- q.queues: the queues with active tenants   q.queue: the queue's name
-- A waiting job's message is its record's field 'message' (written by admit_one with the
-- record, removed as it is dispatched).
-- q.ready_prefix: a tenant's ready set is ready_prefix .. tenant id   q.job_prefix: likewise a job
-- q.depth: the low-water mark
-- Without q.lists (a broker other than this Redis), q.depth is how many to take: their ids are
-- appended to q.out for the caller to publish, and no message is stored.
-- The tenant with the lowest virtual time gives its best job (highest priority, then oldest);
-- its virtual time then grows by 1 / its weight. A tenant whose ready set is empty leaves
-- q.active, and an idle queue's state goes, so idle tenants cost nothing. A job that no
-- longer waits (cancelled while it waited; a recovered attempt started meanwhile by another
-- copy) is dropped with its message. At most 64 entries
-- are looked at per call; what is left is dispatched by the next call.
-- q.counted (optional): how many of q.lists count towards the depth, from the first (all when
--   nil). Admission counts the first only: kombu takes from the lists in order, so a message
--   pushed onto the first waits behind that list alone; the others hold messages kombu put back
--   (restored on a worker's loss, at their priority) and retries published through kombu.
-- active_known: the caller knows q.active is not empty (it just added a tenant to it).
-- Returns how many messages were pushed.
local DISPATCH_PRIORITY_SPAN = 1e15

-- Whether a job in `state`, leased until `lease_until`, waits for its turn: queued, a delayed job
-- or a retry released when due, or a running job whose attempt's lease lapsed (the recovery
-- sweep put it back in its tenant's turn: its message starts the next attempt).
local function dispatchable(state, lease_until)
  if state == 'queued' or state == 'scheduled' or state == 'retrying' then return true end
  if state ~= 'running' then return false end
  local t = redis.call('TIME')
  return tonumber(lease_until or '0') < tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- How many messages q's (counted) broker lists hold.
local function dispatch_depth(q)
  local depth = 0
  for i = 1, q.counted or #q.lists do depth = depth + redis.call('LLEN', q.lists[i]) end
  return depth
end

local function dispatch(q, active_known)
  -- An unlisted queue has no tenant waiting and no state: enqueue_job lists the queue as it
  -- makes a tenant active (and writes its weight), and the queue is unlisted, its state
  -- deleted, only below, once no tenant is active. So an idle queue's dispatch (every
  -- attempt's end on it) costs one command; a listed queue whose tenants all left is
  -- unlisted by the loop (its first look finds no tenant).
  if not active_known and redis.call('SISMEMBER', q.queues, q.queue) == 0 then return 0 end
  local depth = 0
  if q.lists then depth = dispatch_depth(q) end
  local sent, looked = 0, 0
  while depth < q.depth and looked < 64 do
    looked = looked + 1
    local head = redis.call('ZRANGE', q.active, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('DEL', q.state)
      redis.call('SREM', q.queues, q.queue)
      break
    end
    local tenant, vt = head[1], tonumber(head[2])
    local ready = q.ready_prefix .. tenant
    local popped = redis.call('ZPOPMIN', ready)
    if #popped > 0 then
      local id = popped[1]
      local job_key = q.job_prefix .. id
      local f = redis.call('HMGET', job_key, 'state', 'message', 'leaseUntil')
      local message = f[2]
      if message then redis.call('HDEL', job_key, 'message') end
      if (message or not q.lists) and dispatchable(f[1], f[3]) then
        if q.lists then
          redis.call('LPUSH', q.lists[1], message)
        else
          q.out[#q.out + 1] = id
        end
        depth, sent = depth + 1, sent + 1
        redis.call('HSET', q.state, 'v', string.format('%.17g', vt))
        vt = vt + 1 / tonumber(redis.call('HGET', q.state, 'w:' .. tenant) or '1')
      end
    end
    if redis.call('EXISTS', ready) == 0 then
      redis.call('ZREM', q.active, tenant)
      redis.call('HDEL', q.state, 'w:' .. tenant)
    else
      redis.call('ZADD', q.active, string.format('%.17g', vt), tenant)
    end
  end
  return sent
end

-- The dispatch spec from KEYS[k..k+6] (active, state, queues, the four lists) and
-- ARGV[a..a+3] (queue, ready prefix, job prefix, depth); nil when KEYS has none.
local function dispatch_spec(k, a)
  if #KEYS < k + 6 then return nil end
  return {active = KEYS[k], state = KEYS[k + 1], queues = KEYS[k + 2],
          lists = {KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]},
          queue = ARGV[a], ready_prefix = ARGV[a + 1], job_prefix = ARGV[a + 2],
          depth = tonumber(ARGV[a + 3])}
end

-- The same without lists (KEYS[k..k+2]): ARGV[a + 3] is how many to take, into q.out.
local function dispatch_pop_spec(k, a)
  return {active = KEYS[k], state = KEYS[k + 1], queues = KEYS[k + 2],
          out = {}, queue = ARGV[a], ready_prefix = ARGV[a + 1], job_prefix = ARGV[a + 2],
          depth = tonumber(ARGV[a + 3])}
end

-- Admission's first look at a queue for a job due now: 'full' when the (counted) lists hold
-- q.depth messages or more (the job waits in its ready set, and nothing can be dispatched
-- before the run ends: no one takes from the lists meanwhile); 'pushed' when no tenant of the
-- queue waits and the lists are short: fair order has nothing to decide, so its message went
-- straight onto the first list (3 commands with one list counted, instead of a round through
-- the ready set); 'behind' when the lists are short but tenants wait: the job joins them and
-- the queue is dispatched.
local function dispatch_straight(q, message)
  if dispatch_depth(q) >= q.depth then return 'full' end
  if redis.call('EXISTS', q.active) == 1 then return 'behind' end
  redis.call('LPUSH', q.lists[1], message)
  return 'pushed'
end
