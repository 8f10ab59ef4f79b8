-- KEYS: batch, held, scheduled, dlq, dlq_index, stats, queue, health
-- ARGV: n_retry, n_dead, n_stats, n_rate, n_noted, n_started, n_ended,
--       rate_prefix, rate_bucket_s, rate_keep_s, then n_retry x (delay_s, message),
--       n_dead x (id, entry), n_stats x (field, increment), n_rate x (field, increment),
--       n_noted + n_started + n_ended health fields
-- The rate bucket and the health times are read off the server's clock, like
-- every other time in the pipeline; the bucket key is built here from it.
--#include _now
--#include _return_batch

if redis.call('SREM', KEYS[2], KEYS[1]) == 0 then
  -- Not ours any more (fenced off by RECLAIM or SWEEP). Whatever the key still
  -- holds (a BLMOVE that completed after the reclaim) goes back to the queue.
  return_batch(KEYS[1], KEYS[7])
  return 0
end
redis.call('DEL', KEYS[1])
local n_retry, n_dead, n_stats = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n_rate, n_noted = tonumber(ARGV[4]), tonumber(ARGV[5])
local n_started, n_ended = tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 11
for _ = 1, n_retry do
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[i]), ARGV[i + 1]); i = i + 2
end
for _ = 1, n_dead do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[5], now, ARGV[i]); i = i + 2
end
for _ = 1, n_stats do
  redis.call('HINCRBY', KEYS[6], ARGV[i], ARGV[i + 1]); i = i + 2
end
if n_rate > 0 then
  local bucket = ARGV[8] .. string.format('%d', math.floor(now / tonumber(ARGV[9])))
  for _ = 1, n_rate do
    redis.call('HINCRBY', bucket, ARGV[i], ARGV[i + 1]); i = i + 2
  end
  redis.call('EXPIRE', bucket, ARGV[10])
end
local at = string.format('%.6f', now)
for _ = 1, n_noted do redis.call('HSET', KEYS[8], ARGV[i], at); i = i + 1 end
for _ = 1, n_started do redis.call('HSETNX', KEYS[8], ARGV[i], at); i = i + 1 end
for _ = 1, n_ended do redis.call('HDEL', KEYS[8], ARGV[i]); i = i + 1 end
return 1
