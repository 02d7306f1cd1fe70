/* Edit this header while `forkhook -e h -- tcc -run examples/tcc/main.c` runs. */
#define GREETING "hello"
