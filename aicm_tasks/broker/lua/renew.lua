-- KEYS: consumers, seen; ARGV: consumer, lease_s. Returns the server's time.
--#include _now

redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], tostring(now))
return tostring(now)
