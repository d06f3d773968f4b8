--- capil.util.text — small text helpers with one home: POSIX shell quoting
--- (guest commands, the ESXi shell, `capil ssh`), edit distance and
--- similar-name hints ("did you mean", "VMs named like").
local M = {}

-- Characters that never need quoting in a POSIX sh word. `=` is left out
-- on purpose: `'kubelet=1.30.2-1.1'` and `sysctl -w 'k=v'` in role and
-- check commands (and so in plans) stay as they always were.
local PLAIN = "^[%w_%-%./:@,+]+$"

--- Quotes `s` as one POSIX sh word: as is when it holds only safe
--- characters, else in single quotes with each `'` written `'\''`. Raises
--- on NUL (no shell word can hold it) and on values that are not strings
--- or numbers.
---@param s string|number
---@return string
function M.shell_quote(s)
  if type(s) == "number" then s = tostring(s) end
  if type(s) ~= "string" then error("shell_quote: expected a string, got " .. type(s), 2) end
  if s:find("%z") then error("shell_quote: string contains NUL", 2) end
  if s:find(PLAIN) then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- A command line of argv words, each quoted.
---@param argv (string|number)[]
---@return string
function M.shell_join(argv)
  local out = {}
  for i, a in ipairs(argv) do out[i] = M.shell_quote(a) end
  return table.concat(out, " ")
end

--- Levenshtein distance of `a` and `b`; with `limit`, gives up (returning
--- math.huge) as soon as the distance must exceed it, so long strings cost
--- little.
---@param a string
---@param b string
---@param limit? integer
---@return number
function M.distance(a, b, limit)
  limit = limit or math.huge
  if math.abs(#a - #b) > limit then return math.huge end
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    local ai, low = a:byte(i), i
    for j = 1, #b do
      local v = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ai == b:byte(j) and 0 or 1))
      cur[j] = v
      if v < low then low = v end
    end
    if low > limit then return math.huge end
    prev, cur = cur, prev
  end
  local d = prev[#b]
  return d <= limit and d or math.huge
end

--- The closest of `names` to `name` within `limit` edits (default a
--- quarter of its length, at least 2), or nil.
---@param name string
---@param names string[]
---@param limit? integer
---@return string?
function M.closest(name, names, limit)
  limit = limit or math.max(2, #name // 4)
  local best, bd = nil, math.huge
  for _, n in ipairs(names) do
    local d = M.distance(name, n, limit)
    if d < bd then best, bd = n, d end
  end
  return best
end

--- Up to `n` of `names` like `name` (case-insensitive: a few edits away,
--- containing it, or inside it), closest first.
---@param name string
---@param names string[]
---@param n integer
---@return string[]
function M.similar(name, names, n)
  local want = name:lower()
  local limit = math.max(2, #want // 4)
  local hits = {}
  for _, other in ipairs(names) do
    local o = other:lower()
    local d = M.distance(want, o, limit)
    if d <= limit or (#want >= 3 and o:find(want, 1, true)) or (#o >= 3 and want:find(o, 1, true)) then
      hits[#hits + 1] = { name = other, d = d }
    end
  end
  table.sort(hits, function(x, y) if x.d ~= y.d then return x.d < y.d end return x.name < y.name end)
  local out = {}
  for i = 1, math.min(n, #hits) do out[i] = hits[i].name end
  return out
end

return M
