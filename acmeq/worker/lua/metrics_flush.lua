-- metrics_flush.lua: add a worker's aggregated job metrics (successes and failures of up to a
-- second, acmeq.worker.metrics_buffer) to the metric hashes in one round trip.
--
-- KEYS: the hashes to write (minute and hour buckets, the queues' stats hashes).
--
-- ARGV (acmeq.worker.metrics_buffer.FlushArgs):
--   | #  | name    | meaning                                                                 |
--   |----|---------|-------------------------------------------------------------------------|
--   | 1  | updates | JSON list, one entry per KEYS[i]: {"ttl": s (0 = none),                 |
--   |    |         |  "incr": {field: int}, "float": {field: num}, "max": {field: num}}      |
--
-- Reply: the number of hashes written.
local updates = cjson.decode(ARGV[1])
for i, u in ipairs(updates) do
  local key = KEYS[i]
  for field, n in pairs(u.incr) do redis.call('HINCRBY', key, field, n) end
  for field, x in pairs(u.float) do redis.call('HINCRBYFLOAT', key, field, tostring(x)) end
  for field, x in pairs(u.max) do
    local cur = tonumber(redis.call('HGET', key, field) or '0')
    if x > cur then redis.call('HSET', key, field, tostring(x)) end
  end
  if u.ttl > 0 then redis.call('EXPIRE', key, u.ttl) end
end
return #updates
