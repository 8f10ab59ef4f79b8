-- KEYS: batch, held, queue. Hands a batch back to the consuming end of the queue,
-- registered or not: a key that still exists holds records nobody else will return.
--#include _return_batch

redis.call('SREM', KEYS[2], KEYS[1])
return return_batch(KEYS[1], KEYS[3])
