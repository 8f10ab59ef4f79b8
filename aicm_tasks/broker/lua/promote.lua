-- KEYS: scheduled, queue; ARGV: limit, now (empty: the server's clock)
--#include _now

if ARGV[2] ~= '' then now = tonumber(ARGV[2]) end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  redis.call('RPUSH', KEYS[2], unpack(due))
end
return #due
