-- Pushes what a batch key holds back to the consuming end of the queue and
-- deletes it (in chunks: Lua's unpack takes about 8,000 values at most).
local function return_batch(batch, queue)
  local items = redis.call('LRANGE', batch, 0, -1)
  redis.call('DEL', batch)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', queue, unpack(items, i, math.min(i + 999, #items)))
  end
  return #items
end
