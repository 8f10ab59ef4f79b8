-- KEYS: health; ARGV: fields. Sets each field to the server's time; returns it.
-- HDEL first, so a full Redis still runs it (see records.py on maxmemory).
--#include _now

local at = string.format('%.6f', now)
for _, field in ipairs(ARGV) do
  redis.call('HDEL', KEYS[1], field)
  redis.call('HSET', KEYS[1], field, at)
end
return at
