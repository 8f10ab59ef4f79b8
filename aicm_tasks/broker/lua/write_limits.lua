-- KEYS: limits hash, changed channel; ARGV: source, issued_at, limits JSON.
-- Returns 1 when the set changed (and tells subscribers), 0 when it is the same,
-- -1 when a newer token for this source is already stored (two workers' answers
-- crossing: the older must not undo the newer).
local stamp_field = ARGV[1] .. '@issued_at'
local stored_at = tonumber(redis.call('HGET', KEYS[1], stamp_field) or '')
local issued_at = tonumber(ARGV[2])
if stored_at and issued_at < stored_at then
  return -1
end
redis.call('HSET', KEYS[1], stamp_field, ARGV[2])
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
