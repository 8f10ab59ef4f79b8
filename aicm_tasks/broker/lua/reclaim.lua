-- KEYS: consumers, queue; ARGV: key_prefix, the caller (never reclaims itself)
--#include _now
--#include _return_batch

local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local moved = 0
for _, consumer in ipairs(expired) do
  if consumer ~= ARGV[2] then
    local held = ARGV[1] .. ':held:' .. consumer
    for _, batch in ipairs(redis.call('SMEMBERS', held)) do
      moved = moved + return_batch(batch, KEYS[2])
    end
    redis.call('DEL', held)
    redis.call('ZREM', KEYS[1], consumer)
  end
end
return moved
