-- dispatch_pop: take up to n waiting jobs of a queue in fair order, for the caller to publish
-- through its broker (Dispatcher.take: a broker other than this Redis).
-- KEYS[1] active   KEYS[2] state   KEYS[3] dispatch queues
-- ARGV[1] queue   ARGV[2] ready prefix   ARGV[3] job prefix   ARGV[4] n
-- Reply: the job ids taken, in order.
--@include dispatch

local q = dispatch_pop_spec(1, 1)
dispatch(q)
return q.out
