-- KEYS: consumers, held; ARGV: consumer. Only a consumer that holds nothing may leave
-- at once; one still holding batches keeps its lease so that RECLAIM returns them.
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
