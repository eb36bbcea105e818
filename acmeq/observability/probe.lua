-- probe.lua: one consistent read of the load of every queue (acmeq/observability/probe.py).
--
-- KEYS  none: the key names are built here from acmeq/keys.py's layout (acmeq refuses Redis
--       Cluster, so keys need not be declared).
-- ARGV  [1]           n, the number of queues
--       [2 .. n+1]    the queue names
--       [n+2 ..]      worker names whose own state the caller wants (the master's children)
-- Returns { suspended (0/1),
--           { per queue: ready, scheduled, started, deferred, failed, finished,
--             enqueued_at of the head job ('' when none), paused (0/1), busy workers,
--             live workers, processed, failed runs, runtime seconds (string) },
--           { per asked worker: state ('' when none), alive (0/1) } }
-- Only counts and bounded reads: LLEN, ZCARD, LINDEX 0, one HGET, the queue's worker set.
local n = tonumber(ARGV[1])
local rows = {}
for i = 2, n + 1 do
  local q = ARGV[i]
  local qkey = 'rq:queue:' .. q
  local head = redis.call('LINDEX', qkey, 0)
  local enqueued = ''
  if head then
    enqueued = redis.call('HGET', 'rq:job:' .. head, 'enqueued_at') or ''
  end
  local busy, live = 0, 0
  for _, wkey in ipairs(redis.call('SMEMBERS', 'rq:workers:' .. q)) do
    -- alive: born and not dead (RQ sets death on a clean exit; the hash expires otherwise)
    local w = redis.call('HMGET', wkey, 'state', 'birth', 'death')
    if w[2] and not w[3] then
      live = live + 1
      if w[1] == 'busy' then busy = busy + 1 end
    end
  end
  local stats = redis.call('HMGET', 'acmeq:stats:' .. q, 'processed', 'failed', 'runtime')
  rows[#rows + 1] = {
    redis.call('LLEN', qkey),
    redis.call('ZCARD', 'rq:scheduled:' .. q),
    redis.call('ZCARD', 'rq:wip:' .. q),
    redis.call('ZCARD', 'rq:deferred:' .. q),
    redis.call('ZCARD', 'rq:failed:' .. q),
    redis.call('ZCARD', 'rq:finished:' .. q),
    enqueued,
    redis.call('EXISTS', 'acmeq:paused:queue:' .. q),
    busy,
    live,
    stats[1] or '0',
    stats[2] or '0',
    stats[3] or '0',
  }
end
local states = {}
for i = n + 2, #ARGV do
  local w = redis.call('HMGET', 'rq:worker:' .. ARGV[i], 'state', 'birth', 'death')
  local alive = 0
  if w[2] and not w[3] then alive = 1 end
  states[#states + 1] = { w[1] or '', alive }
end
return { redis.call('EXISTS', 'rq:suspended'), rows, states }
