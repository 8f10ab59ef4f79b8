-- KEYS: consumers, seen, names; ARGV: consumer, lease_s, name (the worker's Celery
-- hostname; empty: none). Returns the server's time.
-- ZREM first, so a full Redis still renews leases (see records.py on maxmemory).
--#include _now

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], tostring(now))
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[3]) end
return tostring(now)
