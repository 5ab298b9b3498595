-- dispatch: fill one queue's broker lists from its ready sets (Dispatcher.dispatch; the sweep).
-- KEYS[1] active   KEYS[2] state   KEYS[3] dispatch queues   KEYS[4..7] lists
-- ARGV[1] queue   ARGV[2] ready prefix   ARGV[3] job prefix   ARGV[4] depth
-- Reply: how many messages were pushed.
--@include dispatch

return dispatch(dispatch_spec(1, 1))
