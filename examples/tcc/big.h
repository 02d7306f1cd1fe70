/* big.h: stands for the big headers a program includes before the one you edit (a
 * framework, a generated API, a single-header library). It is small on disk but expands
 * to 40 000 structs and 120 000 functions, which tcc must parse and compile on every
 * run: about half a second, the part forkhook skips when small.h changes.
 *
 * Macro-generated on purpose: tcc parses tens of megabytes of plain declarations per
 * second and does not compile unused `static inline` functions, so a plain header would
 * have to be huge to take a visible time. */
#ifndef BIG_H
#define BIG_H

/* One block: a vector type and three functions, named after `id`. */
#define BIG_BLOCK(id)                                                       \
    typedef struct big_vec_##id { double x, y, z; int tag; } big_vec_##id;  \
    static big_vec_##id big_make_##id(double x, double y, double z) {       \
        big_vec_##id v;                                                     \
        v.x = x; v.y = y; v.z = z; v.tag = 1;                               \
        return v;                                                           \
    }                                                                       \
    static double big_dot_##id(big_vec_##id a, big_vec_##id b) {            \
        return a.x * b.x + a.y * b.y + a.z * b.z;                           \
    }                                                                       \
    static double big_norm2_##id(big_vec_##id a) { return big_dot_##id(a, a); }

/* BIG_R10(m, p) expands m(p0) ... m(p9); the larger ones nest it, so that
 * BIG_R10000(m, a) expands m(a0000) ... m(a9999). */
#define BIG_R10(m, p) \
    m(p##0) m(p##1) m(p##2) m(p##3) m(p##4) m(p##5) m(p##6) m(p##7) m(p##8) m(p##9)
#define BIG_R100(m, p)                                                          \
    BIG_R10(m, p##0) BIG_R10(m, p##1) BIG_R10(m, p##2) BIG_R10(m, p##3)         \
    BIG_R10(m, p##4) BIG_R10(m, p##5) BIG_R10(m, p##6) BIG_R10(m, p##7)         \
    BIG_R10(m, p##8) BIG_R10(m, p##9)
#define BIG_R1000(m, p)                                                         \
    BIG_R100(m, p##0) BIG_R100(m, p##1) BIG_R100(m, p##2) BIG_R100(m, p##3)     \
    BIG_R100(m, p##4) BIG_R100(m, p##5) BIG_R100(m, p##6) BIG_R100(m, p##7)     \
    BIG_R100(m, p##8) BIG_R100(m, p##9)
#define BIG_R10000(m, p)                                                        \
    BIG_R1000(m, p##0) BIG_R1000(m, p##1) BIG_R1000(m, p##2) BIG_R1000(m, p##3) \
    BIG_R1000(m, p##4) BIG_R1000(m, p##5) BIG_R1000(m, p##6) BIG_R1000(m, p##7) \
    BIG_R1000(m, p##8) BIG_R1000(m, p##9)

/* 4 x 10 000 blocks: big_vec_a0000 ... big_vec_d9999 and their functions. */
BIG_R10000(BIG_BLOCK, a)
BIG_R10000(BIG_BLOCK, b)
BIG_R10000(BIG_BLOCK, c)
BIG_R10000(BIG_BLOCK, d)

#endif /* BIG_H */
