-- KEYS: batch, held, scheduled, dlq, dlq_index, stats, queue
-- ARGV: n_retry, n_dead, n_stats, then n_retry x (delay_s, message),
--       n_dead x (id, entry), n_stats x (field, increment)
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
local i = 4
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
return 1
