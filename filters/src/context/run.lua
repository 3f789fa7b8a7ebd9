-- attache's Context API on Redis: one operation of one context, atomically (redis_store.rs
-- describes the keys).
-- KEYS: 1 the object, 2 :ver, 3 :fence, 4 :idx, 5 the record of a keyed request
-- ARGV: 1 the operation (JSON), 2 the request's fingerprint ('' when not keyed),
--       3 the record's retention (ms), 4 the prefix of the context's object keys,
--       5 the prefix of its queues' keys (<q>:m messages, :v visibility, :a attempts,
--         :d dead letters, :dd:<id> dedupe ids)
local op = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The object an operation is about (a batch moves it from object to object).
local KEY = KEYS[1]
local NULL = cjson.null

local function fail(e)
  return cjson.encode(e)
end

-- A keyed request seen before: its outcome, or a refusal if it was another request.
if ARGV[2] ~= '' then
  local rec = redis.call('HMGET', KEYS[5], 'fp', 'out')
  if rec[1] then
    if rec[1] ~= ARGV[2] then
      return fail({err = 'key_reused'})
    end
    return '{"replayed":true,"out":' .. rec[2] .. '}'
  end
end

local function num(s)
  return string.format('%.0f', s)
end

local function next_version()
  local v = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
  if v < now * 1000 then
    v = now * 1000
  end
  redis.call('SET', KEYS[2], num(v))
  return v
end

local function ttl_ms()
  local p = redis.call('PTTL', KEY)
  if p >= 0 then
    return p
  end
  return NULL
end

local function kind()
  return redis.call('HGET', KEY, 't')
end

-- The object's version, or nil when it does not exist.
local function version()
  local v = redis.call('HGET', KEY, 'v')
  if v then
    return tonumber(v)
  end
  return nil
end

local function check_cond(cond, v)
  if cond.if_none_match and v then
    return {err = 'precondition', reason = 'If-None-Match: * and the object exists', current = num(v)}
  end
  if cond.if_match ~= NULL and cond.if_match ~= nil then
    if v == nil then
      return {err = 'precondition', reason = 'If-Match and the object does not exist'}
    end
    if tonumber(cond.if_match) ~= v then
      return {err = 'precondition', reason = 'If-Match "' .. cond.if_match .. '" is not the object\'s version', current = num(v)}
    end
  end
  if cond.fence ~= NULL and cond.fence ~= nil then
    local latest = tonumber(redis.call('HGET', KEYS[3], cond.fence[1]) or '0')
    if tonumber(cond.fence[2]) ~= latest then
      return {err = 'stale_fence', lock = cond.fence[1], token = cond.fence[2], latest = num(latest)}
    end
  end
  return nil
end

-- The expiry a write leaves (ms since the epoch, or nil): as `Ttl::expiry` in op.rs.
local function expiry(ttl, exists)
  local d = ttl.given
  if d == NULL then
    d = ttl.default
  end
  if d == NULL then
    d = nil
  end
  if not exists then
    if d then return now + d end
    return nil
  end
  if ttl.mode == 'touch' and d then
    return now + d
  end
  if ttl.mode == 'keep' and ttl.given ~= NULL then
    return now + ttl.given
  end
  local at = redis.call('PEXPIRETIME', KEY)
  if at >= 0 then
    return at
  end
  return nil
end

local function map_fields(only)
  local out = {}
  if only ~= nil and only ~= NULL then
    for _, f in ipairs(only) do
      local v = redis.call('HGET', KEY, 'f:' .. f)
      if v then
        out[f] = v
      end
    end
  else
    local all = redis.call('HGETALL', KEY)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 2) == 'f:' then
        out[string.sub(all[i], 3)] = all[i + 1]
      end
    end
  end
  -- An empty table would encode as a list.
  if next(out) == nil then
    return cjson.decode('{}')
  end
  return out
end

local function set_members()
  local members = {}
  for _, k in ipairs(redis.call('HKEYS', KEY)) do
    if string.sub(k, 1, 2) == 'm:' then
      members[#members + 1] = string.sub(k, 3)
    end
  end
  table.sort(members)
  return members
end

-- The object as an answer shows it (`page`: {from, count} of a set's members).
local function shown(k, fields, page, created)
  local out = {v = num(version()), ttl_ms = ttl_ms(), created = created}
  if k == 'c' then
    out.k = 'counter'
    out.value = redis.call('HGET', KEY, 'n') or '0'
  elseif k == 'm' then
    out.k = 'map'
    out.fields = map_fields(fields)
  elseif k == 's' then
    out.k = 'set'
    local all = set_members()
    local from, count = 0, 100
    if page ~= nil and page ~= NULL then
      from, count = page[1], page[2]
    end
    local members = {}
    for i = from + 1, math.min(from + count, #all) do
      members[#members + 1] = all[i]
    end
    out.members = members
    if #members == 0 then
      out.members = cjson.decode('[]')
    end
    out.count = #all
    if from + #members < #all then
      out.next = from + #members
    end
  elseif k == 'q' then
    local q = ARGV[5] .. op.name
    out.k = 'queue'
    out.ready = redis.call('ZCOUNT', q .. ':v', '-inf', now)
    out.leased = redis.call('ZCOUNT', q .. ':v', '(' .. now, '+inf')
    out.dead = redis.call('HLEN', q .. ':d')
  elseif k == 'l' then
    local h = redis.call('HMGET', KEY, 'owner', 'token')
    out.k = 'lock'
    out.owner = h[1]
    out.token = h[2]
    out.expires_at_ms = redis.call('PEXPIRETIME', KEY)
  end
  return out
end

local function mismatch(k)
  return {err = 'type_mismatch', actual = k}
end

local function is_integer(text)
  return text and string.match(text, '^%-?%d+$') ~= nil
end

-- === the operations ===

local function get()
  local k = kind()
  if not k then return {err = 'not_found'} end
  if k ~= op.kind then return mismatch(k) end
  return nil, shown(k, op.fields, op.page, false)
end

local function get_field()
  local k = kind()
  if not k then return {err = 'not_found'} end
  if k ~= 'm' then return mismatch(k) end
  local v = redis.call('HGET', KEY, 'f:' .. op.field)
  if not v then return {err = 'no_field', field = op.field} end
  return nil, {k = 'field', value = v, v = num(version())}
end

local function has_member()
  local k = kind()
  if not k then return {err = 'not_found'} end
  if k ~= 's' then return mismatch(k) end
  return nil, {k = 'member', present = redis.call('HEXISTS', KEY, 'm:' .. op.member) == 1}
end

-- A map change, checked whole before anything is written.
local function map_change(ch, limits)
  local pending = {}
  local function current(f)
    local p = pending[f]
    if p ~= nil then
      if p == false then return nil end
      return p
    end
    return redis.call('HGET', KEY, 'f:' .. f) or nil
  end
  if ch.type == 'map_put' then
    for _, f in ipairs(redis.call('HKEYS', KEY)) do
      if string.sub(f, 1, 2) == 'f:' then
        pending[string.sub(f, 3)] = false
      end
    end
  end
  for f, v in pairs(ch.set or {}) do
    pending[f] = v
  end
  for _, f in ipairs(ch.delete or {}) do
    pending[f] = false
  end
  for f, by in pairs(ch.incr or {}) do
    local cur = current(f) or '0'
    if not is_integer(cur) then
      return {err = 'not_integer', field = f}
    end
    pending[f] = num(tonumber(cur) + tonumber(by))
  end
  -- The map after the change: how many fields, how many bytes.
  local nf = tonumber(redis.call('HGET', KEY, 'nf') or '0')
  local nb = tonumber(redis.call('HGET', KEY, 'nb') or '0')
  for f, v in pairs(pending) do
    local old = redis.call('HGET', KEY, 'f:' .. f)
    if old then
      nf = nf - 1
      nb = nb - #f - #old
    end
    if v then
      if #v > limits.value then
        return {err = 'too_large', what = 'value', limit = limits.value}
      end
      nf = nf + 1
      nb = nb + #f + #v
    end
  end
  if nf > limits.map_fields then
    return {err = 'too_many', what = 'fields', limit = limits.map_fields}
  end
  if nb > limits.map_bytes then
    return {err = 'too_large', what = 'map', limit = limits.map_bytes}
  end
  return nil, function()
    for f, v in pairs(pending) do
      if v then
        redis.call('HSET', KEY, 'f:' .. f, v)
      else
        redis.call('HDEL', KEY, 'f:' .. f)
      end
    end
    redis.call('HSET', KEY, 'nf', nf, 'nb', nb)
  end
end

-- A set change, checked whole before anything is written: adds first, then removes, as the
-- memory store counts them.
local function set_change(ch, limits)
  local state = {}
  local function present(m)
    local p = state[m]
    if p ~= nil then return p end
    return redis.call('HEXISTS', KEY, 'm:' .. m) == 1
  end
  local added, removed = 0, 0
  for _, m in ipairs(ch.add or {}) do
    if #m > limits.value then
      return {err = 'too_large', what = 'member', limit = limits.value}
    end
    if not present(m) then
      state[m] = true
      added = added + 1
    end
  end
  for _, m in ipairs(ch.remove or {}) do
    if present(m) then
      state[m] = false
      removed = removed + 1
    end
  end
  local count = 0
  for _, f in ipairs(redis.call('HKEYS', KEY)) do
    if string.sub(f, 1, 2) == 'm:' then count = count + 1 end
  end
  for m, p in pairs(state) do
    local before = redis.call('HEXISTS', KEY, 'm:' .. m) == 1
    if p and not before then count = count + 1 end
    if not p and before then count = count - 1 end
  end
  if count > limits.set_members then
    return {err = 'too_many', what = 'members', limit = limits.set_members}
  end
  return nil, function()
    for m, p in pairs(state) do
      if p then
        redis.call('HSET', KEY, 'm:' .. m, '1')
      else
        redis.call('HDEL', KEY, 'm:' .. m)
      end
    end
    return {k = 'set_updated', added = added, removed = removed, count = count}
  end
end

-- A write's checks, against the state before it; its effect, as a function run afterwards (so
-- that a batch checks every op before it applies any). Reads and writes the object at KEY.
local function prepare_write(w)
  local k = kind()
  if k and k ~= w.kind then return mismatch(k) end
  local exists = k ~= false and k ~= nil
  local e = check_cond(w.cond, version())
  if e then return e end
  local ch = w.change
  local apply
  if ch.type == 'counter_add' then
    local cur = redis.call('HGET', KEY, 'n') or '0'
    local nv = tonumber(cur) + tonumber(ch.by)
    local refused = {err = 'out_of_bounds', value = cur, by = ch.by, min = ch.min, max = ch.max}
    if nv < tonumber(ch.min) or nv > tonumber(ch.max) then
      return refused
    end
    apply = function()
      local done = redis.pcall('HINCRBY', KEY, 'n', ch.by)
      if type(done) == 'table' and done.err then
        return refused
      end
    end
  elseif ch.type == 'counter_set' then
    apply = function() redis.call('HSET', KEY, 'n', ch.value) end
  elseif ch.type == 'map_patch' or ch.type == 'map_put' then
    local err
    err, apply = map_change(ch, w.limits)
    if err then return err end
  elseif ch.type == 'set_update' then
    local err
    err, apply = set_change(ch, w.limits)
    if err then return err end
  else
    return {err = 'unsupported'}
  end
  -- The expiry is read before the data changes, and written in this same script.
  local at = expiry(w.ttl, exists)
  return nil, function()
    local done = apply()
    if done and done.err then return done end
    redis.call('HSET', KEY, 't', w.kind, 'v', num(next_version()))
    if at then redis.call('PEXPIREAT', KEY, at) else redis.call('PERSIST', KEY) end
    redis.call('SADD', KEYS[4], w.name)
    if done then
      done.v = num(version())
      done.ttl_ms = ttl_ms()
      return nil, done
    end
    return nil, shown(w.kind, nil, nil, not exists)
  end
end

local function prepare_delete(d)
  local k = kind()
  if not k then return {err = 'not_found'} end
  if k ~= d.kind then return mismatch(k) end
  local e = check_cond(d.cond, version())
  if e then return e end
  return nil, function()
    redis.call('DEL', KEY)
    if k == 'q' then
      local q = ARGV[5] .. d.name
      redis.call('DEL', q .. ':m', q .. ':v', q .. ':a', q .. ':d')
    end
    redis.call('SREM', KEYS[4], d.name)
    return nil, {k = 'deleted'}
  end
end

local function write()
  local err, finish = prepare_write(op)
  if err then return err end
  return finish()
end

local function delete()
  local err, finish = prepare_delete(op)
  if err then return err end
  return finish()
end

-- An enqueue's checks (the object is a queue, or nothing yet), and its effect: a message
-- with a dedupe id already seen gives that message's id back and adds nothing.
local function prepare_enqueue(e)
  local k = kind()
  if k and k ~= 'q' then return mismatch(k) end
  local q = ARGV[5] .. e.name
  local m = e.message
  return nil, function()
    if m.dedupe ~= NULL and m.dedupe ~= nil then
      local seen = redis.call('GET', q .. ':dd:' .. m.dedupe[1])
      if seen then
        return nil, {k = 'enqueued', id = seen, created = false}
      end
      redis.call('SET', q .. ':dd:' .. m.dedupe[1], m.id, 'PX', m.dedupe[2])
    end
    redis.call('HSET', q .. ':m', m.id, cjson.encode({body = m.body, ct = m.content_type, enq = now,
                                                        tp = m.traceparent, bg = m.baggage}))
    redis.call('ZADD', q .. ':v', now + m.delay, m.id)
    redis.call('HSET', q .. ':a', m.id, 0)
    redis.call('HSET', KEY, 't', 'q', 'v', num(next_version()))
    redis.call('SADD', KEYS[4], e.name)
    return nil, {k = 'enqueued', id = m.id, created = true}
  end
end

-- A batch: every precondition and every op's checks first, against the state before the
-- batch; then every op, in order. All or nothing (`at` names the op a refusal came from).
local function batch()
  for i, c in ipairs(op.checks) do
    KEY = ARGV[4] .. c[1]
    local v = version()
    if v == nil or v ~= tonumber(c[2]) then
      return {err = 'precondition', reason = 'batch precondition ' .. i .. ' (' .. c[1] .. ') does not hold',
              current = v and num(v) or nil, at = 'if', name = c[1]}
    end
  end
  local finishes = {}
  for i, o in ipairs(op.ops) do
    KEY = ARGV[4] .. o.name
    local err, finish
    if o.op == 'write' then
      err, finish = prepare_write(o)
    elseif o.op == 'enqueue' then
      err, finish = prepare_enqueue(o)
    else
      err, finish = prepare_delete(o)
    end
    if err then
      err.at = i - 1
      err.name = o.name
      return err
    end
    finishes[i] = finish
  end
  local outcomes = {}
  for i, o in ipairs(op.ops) do
    KEY = ARGV[4] .. o.name
    local err, out = finishes[i]()
    if err then return err end
    outcomes[i] = out
  end
  return nil, {k = 'batch', outcomes = outcomes}
end

local function acquire()
  local k = kind()
  if k then
    if k ~= 'l' then return mismatch(k) end
    return {err = 'lock_held', ttl_ms = math.max(redis.call('PTTL', KEY), 0)}
  end
  local token = redis.call('HINCRBY', KEYS[3], op.name, 1)
  local at = now + op.ttl
  redis.call('HSET', KEY, 't', 'l', 'v', num(next_version()), 'owner', op.owner,
             'lease', op.lease, 'token', token)
  redis.call('PEXPIREAT', KEY, at)
  redis.call('SADD', KEYS[4], op.name)
  return nil, {k = 'lease', lease = op.lease, token = token, expires_at_ms = at, granted = true}
end

local function renew()
  if redis.call('HGET', KEY, 'lease') ~= op.lease then
    return {err = 'lease_lost'}
  end
  local at = now + op.ttl
  redis.call('HSET', KEY, 'v', num(next_version()))
  redis.call('PEXPIREAT', KEY, at)
  return nil, {k = 'lease', lease = op.lease, token = redis.call('HGET', KEY, 'token'),
               expires_at_ms = at, granted = false}
end

local function release()
  if redis.call('HGET', KEY, 'lease') ~= op.lease then
    return {err = 'lease_lost'}
  end
  redis.call('DEL', KEY)
  redis.call('SREM', KEYS[4], op.name)
  return nil, {k = 'deleted'}
end

-- The context's live objects; names of expired ones are pruned from the index.
local function live_objects()
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local k = redis.call('HGET', ARGV[4] .. name, 't')
    if k then
      out[#out + 1] = {name, k}
    else
      redis.call('SREM', KEYS[4], name)
    end
  end
  return out
end

local function list()
  local objects = live_objects()
  if #objects == 0 then
    objects = cjson.decode('[]')
  end
  return nil, {k = 'objects', objects = objects}
end

local function delete_context()
  local objects = live_objects()
  if #objects == 0 then return {err = 'no_objects'} end
  for _, o in ipairs(objects) do
    redis.call('DEL', ARGV[4] .. o[1])
    if o[2] == 'q' then
      local q = ARGV[5] .. o[1]
      redis.call('DEL', q .. ':m', q .. ':v', q .. ':a', q .. ':d')
    end
  end
  redis.call('DEL', KEYS[4])
  return nil, {k = 'deleted'}
end


-- === queues ===

local function queue_kind()
  local k = kind()
  if not k then return {err = 'not_found'} end
  if k ~= 'q' then return mismatch(k) end
  return nil
end

local function message(q, id, attempt, receipt, stored)
  local m = cjson.decode(stored)
  return {id = id, receipt = receipt, attempt = attempt, body = m.body, content_type = m.ct,
          enqueued_at_ms = m.enq, traceparent = m.tp, baggage = m.bg}
end

local function enqueue()
  local err, finish = prepare_enqueue(op)
  if err then return err end
  return finish()
end

local function lease()
  local e = queue_kind()
  if e then return e end
  local q = ARGV[5] .. op.name
  local due = redis.call('ZRANGEBYSCORE', q .. ':v', '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
  local list = {}
  for i = 1, #due, 2 do
    local attempts = tonumber(redis.call('HGET', q .. ':a', due[i]) or '0')
    list[#list + 1] = {id = due[i], at = tonumber(due[i + 1]), attempts = attempts}
  end
  -- Those whose lease ran out first, then by when they became due.
  table.sort(list, function(a, b)
    local ra, rb = a.attempts > 0, b.attempts > 0
    if ra ~= rb then return ra end
    if a.at ~= b.at then return a.at < b.at end
    return a.id < b.id
  end)
  local leased = {}
  for _, c in ipairs(list) do
    if #leased >= op.max then break end
    local stored = redis.call('HGET', q .. ':m', c.id)
    if stored then
      if c.attempts >= op.max_attempts then
        redis.call('HSET', q .. ':d', c.id, stored)
        redis.call('HDEL', q .. ':m', c.id)
        redis.call('HDEL', q .. ':a', c.id)
        redis.call('ZREM', q .. ':v', c.id)
      else
        local attempt = redis.call('HINCRBY', q .. ':a', c.id, 1)
        redis.call('ZADD', q .. ':v', now + op.visibility, c.id)
        leased[#leased + 1] = message(q, c.id, attempt, c.id .. '.' .. attempt, stored)
      end
    end
  end
  if #leased == 0 then leased = cjson.decode('[]') end
  return nil, {k = 'messages', messages = leased}
end

-- The message a receipt names, if the receipt still holds it.
local function held(q)
  local id, attempt = string.match(op.receipt, '^(.*)%.(%d+)$')
  if not id then return nil end
  if tonumber(redis.call('HGET', q .. ':a', id) or '-1') ~= tonumber(attempt) then return nil end
  local at = redis.call('ZSCORE', q .. ':v', id)
  if not at or tonumber(at) <= now then return nil end
  return id
end

local function ack()
  local e = queue_kind()
  if e then return e end
  local q = ARGV[5] .. op.name
  local id = held(q)
  if not id then return {err = 'lease_lost'} end
  redis.call('HDEL', q .. ':m', id)
  redis.call('HDEL', q .. ':a', id)
  redis.call('ZREM', q .. ':v', id)
  return nil, {k = 'deleted'}
end

local function extend()
  local e = queue_kind()
  if e then return e end
  local q = ARGV[5] .. op.name
  local id = held(q)
  if not id then return {err = 'lease_lost'} end
  redis.call('ZADD', q .. ':v', now + op.visibility, id)
  return nil, {k = 'extended', visible_at_ms = now + op.visibility}
end

local function bury()
  local e = queue_kind()
  if e then return e end
  local q = ARGV[5] .. op.name
  local id = held(q)
  if not id then return {err = 'lease_lost'} end
  redis.call('HSET', q .. ':d', id, redis.call('HGET', q .. ':m', id))
  redis.call('HDEL', q .. ':m', id)
  redis.call('HDEL', q .. ':a', id)
  redis.call('ZREM', q .. ':v', id)
  return nil, {k = 'deleted'}
end

local function dead_letters()
  local e = queue_kind()
  if e then return e end
  local q = ARGV[5] .. op.name
  local all = redis.call('HGETALL', q .. ':d')
  local out = {}
  for i = 1, #all, 2 do
    out[#out + 1] = message(q, all[i], 0, '', all[i + 1])
  end
  table.sort(out, function(a, b) return a.id < b.id end)
  if #out == 0 then out = cjson.decode('[]') end
  return nil, {k = 'messages', messages = out}
end

local function replay()
  local e = queue_kind()
  if e then return e end
  local q = ARGV[5] .. op.name
  local stored = redis.call('HGET', q .. ':d', op.id)
  if not stored then return {err = 'no_dead_letter', id = op.id} end
  redis.call('HDEL', q .. ':d', op.id)
  redis.call('HSET', q .. ':m', op.id, stored)
  redis.call('HSET', q .. ':a', op.id, 0)
  redis.call('ZADD', q .. ':v', now, op.id)
  return nil, {k = 'deleted'}
end

local ops = {
  get = get, get_field = get_field, has_member = has_member, write = write, delete = delete,
  acquire = acquire, renew = renew, release = release, list = list,
  delete_context = delete_context, batch = batch, enqueue = enqueue, lease = lease,
  ack = ack, extend = extend, bury = bury, dead_letters = dead_letters, replay = replay,
}
local err, out = ops[op.op]()
if err then
  return fail(err)
end
local encoded = cjson.encode(out)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[5], 'fp', ARGV[2], 'out', encoded)
  redis.call('PEXPIRE', KEYS[5], ARGV[3])
end
return '{"replayed":false,"out":' .. encoded .. '}'
