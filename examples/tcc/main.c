/* forkhook example: a compile that parses a big header before the one you edit.
 *
 *   forkhook -e h -- tcc -run examples/tcc/main.c
 *
 * Edit small.h while it runs: forkhook resumes tcc from just before it opens small.h,
 * so big.h is not parsed and compiled again. */
#include <stdio.h>

#include "big.h"
#include "small.h"

int main(void) {
    big_vec_a0042 v = big_make_a0042(1.0, 2.0, 2.0);
    printf("%s\n", GREETING);
    printf("|v|^2 = %g, from one of the 40000 vector types in big.h\n", big_norm2_a0042(v));
    return 0;
}
