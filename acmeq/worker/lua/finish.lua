-- finish.lua: record a plain job's success as RQ's handle_job_success would (result stream,
-- finished registry, TTLs, worker counters, execution cleanup) and, when asked, take and start
-- the next job in the same call. Metrics are not written here: the worker aggregates successes
-- and failures alike and flushes them once a second (acmeq.worker.metrics_buffer).
--
-- KEYS: none (see start.lua).
--
-- ARGV (acmeq.worker.fastpath.FinishArgs, in field order, then optionally StartArgs):
--   | #  | name         | meaning                                                            |
--   |----|--------------|--------------------------------------------------------------------|
--   | 1  | queue        | queue name                                                         |
--   | 2  | worker       | RQ worker name                                                     |
--   | 3  | job_id       | the finished job                                                   |
--   | 4  | exec_id      | its execution id                                                   |
--   | 5  | now_iso      | now, RQ's ISO format (ended_at)                                    |
--   | 6  | now_ts       | now, epoch seconds (execution_ended_at, registry score)            |
--   | 7  | result       | base64 of the JSON return value; '' = None (no return_value field) |
--   | 8  | result_ttl   | s; 0 = delete the job now, < 0 = keep for ever                     |
--   | 9  | working_time | s, added to the worker's total_working_time                        |
--   | 10 | started_ts   | execution start, epoch seconds                                     |
--   | 11 | take_next    | '1' = also start the next job with ARGV[12..22] (StartArgs)        |
--
-- Reply: {'slow'}: nothing written, the job has dependents (RQ's own code must record it);
--        {'done'} when take_next is '0'; else start.lua's reply for the next job.
local FINISH_ARGS = {'queue', 'worker', 'job_id', 'exec_id', 'now_iso', 'now_ts', 'result',
                     'result_ttl', 'working_time', 'started_ts', 'take_next'}

local function finish(a)
  local id = a.job_id
  local jkey = 'rq:job:' .. id
  local wkey = 'rq:worker:' .. a.worker
  local composite = id .. ':' .. a.exec_id
  local ttl = tonumber(a.result_ttl)
  local now = tonumber(a.now_ts)
  redis.call('HINCRBY', wkey, 'successful_job_count', 1)
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', a.working_time)
  if ttl ~= 0 then
    redis.call('HSET', jkey, 'status', 'finished', 'ended_at', a.now_iso,
               'last_heartbeat', a.now_iso)
    local rkey = 'rq:results:' .. id
    if a.result ~= '' then
      redis.call('XADD', rkey, 'MAXLEN', '~', 10, '*', 'type', 1, 'worker_name', a.worker,
                 'return_value', a.result, 'execution_id', a.exec_id,
                 'execution_started_at', a.started_ts, 'execution_ended_at', a.now_ts)
    else
      redis.call('XADD', rkey, 'MAXLEN', '~', 10, '*', 'type', 1, 'worker_name', a.worker,
                 'execution_id', a.exec_id, 'execution_started_at', a.started_ts,
                 'execution_ended_at', a.now_ts)
    end
    if ttl < 0 then
      redis.call('PERSIST', rkey)
      redis.call('ZADD', 'rq:finished:' .. a.queue, '+inf', id)
      redis.call('PERSIST', jkey)
    else
      redis.call('EXPIRE', rkey, ttl)
      redis.call('ZADD', 'rq:finished:' .. a.queue, now + ttl, id)
      redis.call('EXPIRE', jkey, ttl)
      redis.call('EXPIRE', jkey .. ':dependents', ttl)
      redis.call('EXPIRE', jkey .. ':dependencies', ttl)
    end
  else
    -- RQ's job.delete(): the hash, its dependency sets, results, executions, group membership
    local group = redis.call('HGET', jkey, 'group_id')
    if group and group ~= '' then redis.call('SREM', 'rq:group:' .. group, id) end
    redis.call('DEL', jkey, jkey .. ':dependents', jkey .. ':dependencies',
               'rq:results:' .. id, 'rq:executions:' .. id)
  end
  redis.call('DEL', 'rq:execution:' .. composite)
  redis.call('ZREM', 'rq:wip:' .. a.queue, composite)
  redis.call('ZREM', 'rq:executions:' .. id, a.exec_id)
  redis.call('SREM', wkey .. ':executions', composite)
end

local a = named(FINISH_ARGS, 0)
if redis.call('SCARD', 'rq:job:' .. a.job_id .. ':dependents') > 0 then return {'slow'} end
finish(a)
-- the worker goes idle unless it starts the next job at once (start sets it busy again)
local idle = {'HSET', 'rq:worker:' .. a.worker, 'state', 'idle'}
if a.take_next ~= '1' then
  redis.call(unpack(idle))
  return {'done'}
end
local reply = start(named(START_ARGS, #FINISH_ARGS))
if reply[1] ~= 'job' then redis.call(unpack(idle)) end
return reply
