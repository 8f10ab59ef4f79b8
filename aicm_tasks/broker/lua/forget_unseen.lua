-- KEYS: seen, consumers, names; ARGV: older_than_s. Drops ``seen`` (and ``names``)
-- entries of workers gone longer than that (and holding no lease), on the server's clock.
--#include _now

local flat = redis.call('HGETALL', KEYS[1])
local dropped = 0
for i = 1, #flat, 2 do
  if tonumber(flat[i + 1]) < now - tonumber(ARGV[1])
     and not redis.call('ZSCORE', KEYS[2], flat[i]) then
    redis.call('HDEL', KEYS[1], flat[i]); dropped = dropped + 1
    redis.call('HDEL', KEYS[3], flat[i])
  end
end
return dropped
