/* frame_fuzz.c: fragment assembly (gateway/frame.c) against a model.
 *
 * The input is a script: byte 0 picks the frame cap, then each 4-byte step
 * is a piece of (length, announced remaining, final flag).  Pieces carry a
 * counter pattern; the assembled message must equal their concatenation, a
 * refusal must only happen when the cap is really exceeded, and the buffer
 * never writes past what it allocated (ASan). */
#include <stdlib.h>
#include <string.h>
#include <assert.h>
#include "gateway.h"
#include "stubs.h"

/* One script run; the model is a plain byte counter. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char piece[70000];
	struct frame_buf f = { 0 };
	size_t max, model = 0;
	unsigned char next = 0, check = 0;

	if (size < 1)
		return 0;
	/* Small caps (64 B .. 16 KiB) reach the limit often; 255: the default. */
	max = data[0] == 255 ? 65536 : 64 + (size_t)data[0] * 64;
	/* At most 1 MiB of pieces per run: many runs beat long ones. */
	for (size_t i = 1, fed = 0; i + 4 <= size && fed < (1u << 20); i += 4) {
		size_t len = (size_t)data[i] | ((size_t)(data[i + 1] & 0x3f) << 8);
		size_t remaining = (size_t)data[i + 2] * 37;
		int final = data[i + 3] & 1;
		size_t before = f.len;

		if (data[i + 3] & 2)
			len *= 4;	/* pieces up to 64 KiB */
		if (len > sizeof(piece))
			len = sizeof(piece);
		for (size_t k = 0; k < len; k++)
			piece[k] = (char)next++;
		fed += len;
		if (frame_append(&f, piece, len, remaining, max) != 0) {
			assert(len + remaining > max - before);
			frame_reset(&f);
			model = 0;
			check = next;
			continue;
		}
		model += len;
		assert(f.len == model && f.cap >= f.len && f.len <= max);
		if (final) {
			for (size_t k = 0; k < f.len; k++)
				assert((unsigned char)f.data[k] == (unsigned char)(check + k));
			frame_reset(&f);
			model = 0;
			check = next;
		}
	}
	frame_reset(&f);
	return 0;
}
