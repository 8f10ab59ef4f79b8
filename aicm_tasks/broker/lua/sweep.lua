-- KEYS: batch, held (of the batch's consumer), consumers, queue; ARGV: consumer
-- Returns a batch key to the queue unless a live lease covers it: registered in
-- its consumer's held set, and that consumer's lease not yet expired. Whatever
-- left a key uncovered (a BLMOVE that completed after a reclaim, then a kill),
-- its records go back; -1 when the key is covered and left alone.
--#include _now
--#include _return_batch

if redis.call('SISMEMBER', KEYS[2], KEYS[1]) == 1 then
  local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if deadline and tonumber(deadline) > now then return -1 end
  redis.call('SREM', KEYS[2], KEYS[1])
end
return return_batch(KEYS[1], KEYS[4])
