-- KEYS: consumers; ARGV: the caller (never listed), limit. The consumers whose
-- lease expired, on the server's clock: what RECLAIM then takes back one by one.
--#include _now

local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])
local found = {}
for _, consumer in ipairs(expired) do
  if consumer ~= ARGV[1] then found[#found + 1] = consumer end
end
return found
