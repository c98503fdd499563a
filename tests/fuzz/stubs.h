/* stubs.h: the knobs of tests/fuzz/stubs.c. */
#ifndef CHAT_FUZZ_STUBS_H
#define CHAT_FUZZ_STUBS_H
#include <stddef.h>
#include <stdint.h>

extern uint64_t stub_sends;
extern void **stub_refs;
extern size_t stub_n_refs;
extern int stub_ref_fail;
void stub_config(void);

#endif
