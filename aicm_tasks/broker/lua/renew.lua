-- KEYS: consumers, seen; ARGV: consumer, lease_s. Returns the server's time.
-- ZREM first, so a full Redis still renews leases (see records.py on maxmemory).
--#include _now

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], tostring(now))
return tostring(now)
