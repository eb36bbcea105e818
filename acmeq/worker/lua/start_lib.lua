-- start_lib.lua: the function that takes a job and marks it started, shared by start.lua and
-- finish.lua (Python prepends this file to both; it has no main block of its own).
--
-- a (a table of the StartArgs fields, see start.lua's header):
--   queue, worker, now_iso, now_ts, exec_id, job_id, pause_queue, pause_supervisor,
--   timeout_override, default_timeout, no_timeout_ttl
--
-- Reply: {'paused'} | {'empty'} | {'gone', id} | {'job', id, <job hash as HGETALL>}
local function start(a)
  local qkey = 'rq:queue:' .. a.queue
  local ikey = qkey .. ':intermediate'
  local id = a.job_id
  local paused = redis.call('EXISTS', 'rq:suspended', a.pause_queue)
  if a.pause_supervisor ~= '' then paused = paused + redis.call('EXISTS', a.pause_supervisor) end
  if paused > 0 then
    if id ~= '' then
      -- taken by a blocking BLMOVE just before the pause: put it back at the head
      redis.call('LREM', ikey, 1, id)
      redis.call('LPUSH', qkey, id)
    end
    return {'paused'}
  end
  if id == '' then
    -- LPOP inside the script is as safe as BLMOVE: the job is registered as started below
    -- before anything else can run, so a crash after this call leaves it in the registry.
    id = redis.call('LPOP', qkey)
    if not id then return {'empty'} end
  else
    redis.call('LREM', ikey, 1, id)
  end
  local jkey = 'rq:job:' .. id
  local h = redis.call('HGETALL', jkey)
  if #h == 0 then return {'gone', id} end
  local timeout = tonumber(a.timeout_override)
  if timeout == 0 then
    timeout = tonumber(a.default_timeout)
    for i = 1, #h, 2 do
      if h[i] == 'timeout' and h[i + 1] ~= '' then timeout = tonumber(h[i + 1]) or timeout end
    end
  end
  local ttl = timeout + 60
  if timeout < 0 then ttl = tonumber(a.no_timeout_ttl) end
  local now = tonumber(a.now_ts)
  local exec = a.exec_id
  local ekey = 'rq:execution:' .. id .. ':' .. exec
  local composite = id .. ':' .. exec
  local wkey = 'rq:worker:' .. a.worker
  redis.call('HSET', ekey, 'id', exec, 'job_id', id, 'created_at', a.now_ts,
             'last_heartbeat', a.now_ts, 'worker_name', a.worker)
  redis.call('EXPIRE', ekey, ttl)
  redis.call('ZADD', 'rq:executions:' .. id, now + ttl + 60, exec)
  redis.call('EXPIRE', 'rq:executions:' .. id, ttl + 60)
  redis.call('ZADD', 'rq:wip:' .. a.queue, now + ttl, composite)
  redis.call('SADD', wkey .. ':executions', composite)
  redis.call('EXPIRE', wkey .. ':executions', ttl + 60)
  redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', a.now_iso)
  redis.call('EXPIRE', wkey, ttl + 60)
  redis.call('HSET', jkey, 'last_heartbeat', a.now_iso, 'status', 'started',
             'started_at', a.now_iso, 'worker_name', a.worker)
  redis.call('PERSIST', jkey)
  return {'job', id, h}
end

-- ARGV[offset + 1 ..] as a table named by `names` (the dataclass fields, in order).
local function named(names, offset)
  local a = {}
  for i, name in ipairs(names) do a[name] = ARGV[offset + i] end
  return a
end

local START_ARGS = {'queue', 'worker', 'now_iso', 'now_ts', 'exec_id', 'job_id', 'pause_queue',
                    'pause_supervisor', 'timeout_override', 'default_timeout', 'no_timeout_ttl'}
