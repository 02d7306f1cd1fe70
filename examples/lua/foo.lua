-- Edit this file while `forkhook -e lua -- lua5.4 examples/lua/main.lua` runs.
print("foo!")
