/* media_thumb.c: image dimensions and thumbnails with libvips, on the
 * request's own thread (chat-media has no event loop to stall: see
 * docs/media.md).  Kept apart from the other modules: glib's headers and
 * the gateway's log levels do not mix. */
#include <vips/vips.h>
#include "media.h"

/* Longest side of a thumbnail, in pixels. */
#define THUMB_SIDE 320
/* Larger images (decompression bombs among them) get no thumbnail. */
#define THUMB_MAX_PIXELS (100.0 * 1000 * 1000)

/* Starts libvips (once, before any thread uses it); small caches: the
 * server reads each image once. */
int
thumb_init(const char *argv0)
{
	if (VIPS_INIT(argv0))
		return -1;
	vips_cache_set_max(0);
	vips_concurrency_set(1);
	return 0;
}

/* Dimensions of path, and a JPEG thumbnail of it at thumb_path. */
int
thumb_make(const char *path, const char *thumb_path, int *width, int *height)
{
	VipsImage *in, *out = NULL;
	int rc = 1;

	in = vips_image_new_from_file(path, "access", VIPS_ACCESS_SEQUENTIAL, NULL);
	if (!in) {
		vips_error_clear();
		return -1;
	}
	*width = vips_image_get_width(in);
	*height = vips_image_get_height(in);
	g_object_unref(in);
	if ((double)*width * (double)*height > THUMB_MAX_PIXELS)
		return 1;
	/* thumbnail from the file: vips shrinks on load where the format allows */
	if (vips_thumbnail(path, &out, THUMB_SIDE, "height", THUMB_SIDE, NULL) == 0) {
		if (vips_jpegsave(out, thumb_path, "Q", 80, "strip", TRUE, NULL) == 0)
			rc = 0;
		g_object_unref(out);
	}
	if (rc != 0)
		vips_error_clear();
	vips_thread_shutdown();
	return rc;
}
