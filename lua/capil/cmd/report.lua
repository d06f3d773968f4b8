--- capil report — run reports: `capil report merge OUT_DIR REPORT...|DIR...`
--- joins the JSON reports and JUnit files of the shards of a run (`capil run
--- BUNDLE --shard K/N --report F --junit F`) into OUT_DIR/report.json and
--- OUT_DIR/junit.xml.
local cli = require("capil.cli")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local xml = require("capil.sys.xml")

-- The largest report file read (a run of many builds with many checks).
local MAX_FILE = 64 * 1024 * 1024

local SUB = {
  merge = { usage = "report merge OUT_DIR REPORT...|DIR...", options = {} },
}

local HELP = [[
Subcommands:
  merge OUT_DIR REPORT...|DIR...
                   Joins the reports of the shards of a run ('capil run BUNDLE
                   --shard K/N --report F --junit F', one CI job per shard)
                   into OUT_DIR/report.json and OUT_DIR/junit.xml. Arguments
                   are files (.json: a report of 'capil run --report'; .xml:
                   JUnit of 'capil run --junit') or directories, searched
                   recursively for both (as CI systems download artifacts,
                   one directory per job; a JSON or XML file there that is
                   not a run report or JUnit is skipped with a notice).
                   Every build is kept, with its shard; counts are summed;
                   seconds is the longest shard's; ok only when every build
                   passed and every shard 1..N reported. Without JUnit files
                   junit.xml is made from the merged JSON; with them, their
                   testsuites must be the builds of the JSON reports.
                   Refused (exit 2): an unreadable file, reports of different
                   numbers of shards, a shard or a build given twice, sharded
                   and unsharded reports together. Exit 0 when the merged
                   report is ok, 1 when a build failed or a shard is missing.]]

-- Files under dir (recursively) ending in .json or .xml, sorted.
local function walk(dir, out)
  local names = fs.list(dir) or {}
  table.sort(names)
  for _, f in ipairs(names) do
    local p = dir .. "/" .. f
    local st = fs.stat(p)
    if st and st.type == "directory" then
      walk(p, out)
    elseif st and st.type == "file" and (f:match("%.json$") or f:match("%.xml$")) then
      out[#out + 1] = p
    end
  end
  return out
end

-- Reads one input file: {path=, data=} for a report, {path=, doc=} for
-- JUnit; nil and a message when it is neither (`found`: in a directory,
-- where other files may lie).
local function read_input(path, found)
  local text, err = fs.read_file(path, { max = MAX_FILE })
  if not text then return nil, ("%s: cannot read: %s"):format(path, err) end
  if path:match("%.xml$") then
    local doc, perr = xml.parse(text)
    if not doc then return nil, ("%s: not XML: %s"):format(path, perr) end
    if found and doc.name ~= "testsuites" and doc.name ~= "testsuite" then return nil, nil, "skip" end
    return { path = path, doc = doc }, "junit"
  end
  local data, jerr = json.decode(text)
  if data == nil then
    return nil, ("%s: not JSON: %s"):format(path, tostring(jerr):gsub("^json%.decode: ", ""))
  end
  if found and not (type(data) == "table" and type(data.builds) == "table" and data.total ~= nil) then
    return nil, nil, "skip"
  end
  return { path = path, data = data }, "report"
end

local function merge(_, args)
  if #args < 2 then cli.fail("report merge: name the output directory, then the reports (files or directories)", 2) end
  local parallel = require("capil.build.parallel")
  local out_dir = args[1]:gsub("(.)/+$", "%1")
  local reports, junits, errors = {}, {}, {}
  -- the output must not overwrite an input (a merge into a shard's directory)
  local own = {}
  for _, f in ipairs({ "report.json", "junit.xml" }) do
    local real = fs.realpath(out_dir .. "/" .. f)
    if real then own[real] = out_dir .. "/" .. f end
  end
  local function add(path, found)
    local real = fs.realpath(path)
    if real and own[real] then
      errors[#errors + 1] = ("%s: the output %s would overwrite this input: merge into another directory"):format(
        path, own[real])
      return
    end
    local inp, kind, skip = read_input(path, found)
    if skip then
      log.info("%s: not a run report or JUnit, skipped", path)
    elseif not inp then
      errors[#errors + 1] = kind
    elseif kind == "junit" then
      junits[#junits + 1] = inp
    else
      reports[#reports + 1] = inp
    end
  end
  for i = 2, #args do
    local a = args[i]
    local st, err = fs.stat(a)
    if not st then
      errors[#errors + 1] = ("%s: cannot read: %s"):format(a, tostring(err):gsub("^fs%.stat: [^:]*: ", ""))
    elseif st.type == "directory" then
      local files = walk(a, {})
      local before = #reports + #junits
      for _, f in ipairs(files) do add(f, true) end
      if #reports + #junits == before and #errors == 0 then
        errors[#errors + 1] = ("%s: no run report (.json) or JUnit (.xml) in it"):format(a)
      end
    elseif not (a:match("%.json$") or a:match("%.xml$")) then
      errors[#errors + 1] = ("%s: a report is a .json file (capil run --report) or a .xml file (--junit)"):format(a)
    else
      add(a, false)
    end
  end
  if #errors == 0 and #reports == 0 then
    errors[#errors + 1] = "no JSON run report among the inputs: merge needs the shards' --report files"
  end
  if #errors > 0 then cli.fail("report merge: " .. table.concat(errors, "\nreport merge: "), 2) end
  local merged, notes = parallel.merge_reports(reports)
  if not merged then cli.fail("report merge: " .. table.concat(notes, "\nreport merge: "), 2) end
  for _, w in ipairs(notes) do log.warn("report merge: %s", w) end
  local junit_text, jerrs
  if #junits > 0 then
    junit_text, jerrs = parallel.merge_junit(junits, merged)
    if not junit_text then cli.fail("report merge: " .. table.concat(jerrs, "\nreport merge: "), 2) end
  else
    junit_text = parallel.junit(merged)
  end
  local ok, err = fs.mkdir(out_dir)
  if not ok then cli.fail(("report merge: %s: %s"):format(out_dir, err), 1) end
  local rpath, jpath = out_dir .. "/report.json", out_dir .. "/junit.xml"
  ok, err = fs.write_atomic(rpath, log.redact(json.encode(merged, { indent = 2, sort_keys = true })) .. "\n")
  if not ok then cli.fail("report merge: " .. err, 1) end
  ok, err = fs.write_atomic(jpath, junit_text)
  if not ok then cli.fail("report merge: " .. err, 1) end
  local function count(n, what) return ("%d %s%s"):format(n, what, n == 1 and "" or "s") end
  log.info("merged %s%s: %s, %d passed, %d failed", count(#reports, "report"),
    #junits > 0 and (" and %s"):format(count(#junits, "JUnit file")) or "", count(merged.total, "build"),
    merged.passed, merged.failed)
  log.out(rpath)
  log.out(jpath)
  return merged.ok and 0 or 1
end

local RUN = { merge = merge }

return {
  summary = "merge the JSON reports and JUnit files of a sharded run",
  usage = "report merge OUT_DIR REPORT...|DIR...",
  help = HELP,
  options = {},
  stop_at_positional = true,
  run = function(_, args)
    return cli.subcommand("report", args, SUB, RUN, { "merge" })
  end,
}
