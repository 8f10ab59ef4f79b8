-- KEYS: health, queue, scheduled; ARGV: field (IDLE_AT). Sets it to the server's
-- time unless a record is queued or due in the scheduled set (a countdown not
-- yet due waits for nobody). Returns 1 when noted. The caller checked that no
-- worker holds a record. HDEL first, so a full Redis still runs it (records.py).
--#include _now

if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
if redis.call('ZCOUNT', KEYS[3], '-inf', now) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.6f', now))
return 1
