-- forkhook example: the program from forkmon's README, with a slow start.
--
--   forkhook -e lua -- lua5.4 examples/lua/main.lua
--
-- Edit foo.lua while it runs: forkhook resumes from just before `require("foo")`,
-- so "startup" and the slow computation are not done again.

-- Find foo.lua next to this file, whatever the current directory is.
local dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path

print("startup")

-- The slow part. It stands for whatever a real program does before it reaches the code
-- you are editing: loading data, building tables, parsing configuration.
local started = os.clock()
local count = 160000000
local sum = 0
for i = 1, count do
  sum = sum + i % 7
end
print(string.format("computed the sum of i %% 7 for i = 1..%d: %d (%.2f s)", count, sum, os.clock() - started))

require("foo")

print("finished")
