-- KEYS: dlq, dlq_index, queue; ARGV: id, message. Only an entry still stored is replayed.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
