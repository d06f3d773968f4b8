--- capil bundle — what a bundle holds, for CI: `capil bundle matrix BUNDLE
--- --format github|gitlab [--shards N]` prints the shards of `capil run
--- BUNDLE --shard K/N` as a CI matrix.
local bundle = require("capil.build.bundle")
local cli = require("capil.cli")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local log = require("capil.sys.log")

-- The most jobs one matrix may make: GitHub Actions' 256 per workflow run
-- matrix, GitLab's 200 per parallel:matrix.
local LIMITS = { github = 256, gitlab = 200 }

local SUB = {
  matrix = {
    usage = "bundle matrix BUNDLE... [--format github|gitlab] [--shards N] [--only L] [--except L]",
    options = {
      { name = "format", arg = "F", help = "github (default): {\"include\": [...]} JSON; gitlab: parallel:matrix YAML" },
      { name = "shards", arg = "N", help = "split the builds into N shards (default: one shard per build)" },
      { name = "only", arg = "LIST", help = "only these recipe names (as 'capil run --only')" },
      { name = "except", arg = "LIST", help = "not these recipe names (as 'capil run --except')" },
      { name = "recipes-dir", arg = "DIR", help = "recipes directory (with --all)" },
      { name = "all", help = "every recipe in --recipes-dir, as 'capil run --all'" },
    },
  },
}

local HELP = [[
Subcommands:
  matrix BUNDLE    Prints the shards of 'capil run BUNDLE --shard K/N' for a CI
                   system's job matrix, one job per shard, each with its
                   shard ("2/4") and the names of its builds (build_name, else
                   the recipe name), comma-separated:
                     --format github  one line of JSON for strategy.matrix:
                       {"include":[{"shard":"1/2","builds":"a,c"},...]}
                       (write it to $GITHUB_OUTPUT and use
                       matrix: ${{ fromJSON(needs.plan.outputs.matrix) }})
                     --format gitlab  YAML for a job's parallel:matrix, with
                       the variables CAPIL_SHARD and CAPIL_BUILDS
                   --shards N makes N shards (default, and at most: one per
                   build); --only/--except/--all filter as 'capil run' does,
                   so give 'capil run' the same ones.

Shards are stable: the builds are sorted by name (then by recipe, backend
and vars, to tell apart two of the same name), and the i-th of them (from 0)
goes to shard i % N + 1. The same bundle always makes the same shards,
whatever the order of its entries, every job computes its share without
talking to the others, and the shards' sizes differ by one build at most
(a hash of the name would be stable across edits of the bundle too, but
leaves some shards empty and others doubled on a matrix of ten builds).]]

local function matrix(opts, args)
  local parallel = require("capil.build.parallel")
  local format = opts.format or "github"
  if not LIMITS[format] then
    cli.fail(("bundle matrix: --format must be github or gitlab, not '%s'"):format(format), 2)
  end
  if #args == 0 and not opts.all then cli.fail("bundle matrix: name a bundle (or recipes, or --all)", 2) end
  for _, a in ipairs(args) do
    if (a:find("/", 1, true) or a:match("%.lua$")) and not fs.exists(a) then
      cli.fail(("bundle matrix: %s: no such bundle or recipe file"):format(a), 2)
    end
  end
  local builds, errs = parallel.builds(args, opts)
  if not builds then cli.fail(table.concat(errs, "\n"), 2) end
  if #builds == 0 then cli.fail("bundle matrix: no build left after --only/--except", 2) end
  local n = #builds
  if opts.shards then
    n = math.tointeger(tonumber(opts.shards))
    if not (opts.shards:match("^%s*%d+%s*$") and n and n >= 1) then
      cli.fail(("bundle matrix: --shards must be a whole number of shards, 1 or more, not '%s'"):format(
        opts.shards), 2)
    end
    if n > #builds then
      log.info("%d shards asked for %d builds: printing %d shards, one build each", n, #builds, #builds)
      n = #builds
    end
  end
  if n > LIMITS[format] then
    cli.fail(("bundle matrix: %d shards: a %s matrix makes at most %d jobs: use --shards %d or fewer"):format(n,
      format, LIMITS[format], LIMITS[format]), 2)
  end
  local rows = {}
  for k, list in ipairs(bundle.shards(builds, n)) do
    local names = {}
    for _, b in ipairs(list) do names[#names + 1] = bundle.build_label(b) end
    rows[k] = { shard = ("%d/%d"):format(k, n), builds = table.concat(names, ",") }
  end
  if format == "github" then
    io.stdout:write(json.encode({ include = rows }, { sort_keys = true }), "\n")
  else
    -- JSON strings are YAML double-quoted scalars
    local lines = { "parallel:", "  matrix:" }
    for _, r in ipairs(rows) do
      lines[#lines + 1] = "    - CAPIL_SHARD: " .. json.encode(r.shard)
      lines[#lines + 1] = "      CAPIL_BUILDS: " .. json.encode(r.builds)
    end
    io.stdout:write(table.concat(lines, "\n"), "\n")
  end
  return 0
end

local RUN = { matrix = matrix }

return {
  summary = "print a bundle's shards as a CI matrix (GitHub Actions, GitLab)",
  usage = "bundle matrix BUNDLE... [--format github|gitlab] [--shards N]",
  help = HELP,
  options = {},
  stop_at_positional = true,
  run = function(_, args)
    return cli.subcommand("bundle", args, SUB, RUN, { "matrix" })
  end,
}
