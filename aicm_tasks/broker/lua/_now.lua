-- Included by every script that reads the clock: leases, their expiry and retry
-- due times are decided on the Redis server's clock (TIME), never a host's, so a
-- worker whose clock runs ahead cannot reclaim live batches. (Since Redis 5,
-- scripts replicate their effects, so a script that reads TIME may write.)
local _t = redis.call('TIME')
local now = tonumber(_t[1]) + tonumber(_t[2]) / 1000000
