/* JPEG decoding through libjpeg-turbo, the library under PIL and
 * torchvision, so that pixpro sees the pixels a PyTorch pipeline sees; and
 * its DCT scaling (1/2, 1/4, 1/8), which decodes a large photo at the size a
 * crop needs for a fraction of the work (src/data/jpeg.rs).
 *
 * libjpeg reports fatal errors through a callback that must not return, so
 * each call sets a jump point. Warnings (corrupt but decodable data, which
 * PIL accepts too) are not printed: a cut-short file, the one warning that
 * loses pixels, is refused before decoding by the caller. */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct pixpro_jpeg_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char *message;
    size_t message_len;
};

static void on_error(j_common_ptr cinfo) {
    struct pixpro_jpeg_error *err = (struct pixpro_jpeg_error *)cinfo->err;
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    if (err->message_len > 0) {
        snprintf(err->message, err->message_len, "%s", text);
    }
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* Level -1 is a warning, counted as libjpeg's default does. */
    if (level < 0) cinfo->err->num_warnings++;
}

enum {
    PIXPRO_JPEG_OK = 0,
    PIXPRO_JPEG_ERROR = 1,
    /* CMYK and YCCK: libjpeg cannot convert them to RGB. */
    PIXPRO_JPEG_UNSUPPORTED_COLOUR = 2,
    PIXPRO_JPEG_BUFFER_SIZE = 3,
};

/* Decodes `data` to RGB8 at 1/`denom` of its stored size (denom 1, 2, 4 or
 * 8). With `out` NULL only the header is read and the output size written
 * to `width`/`height`; otherwise `out` must hold exactly width*height*3
 * bytes of that size. */
int pixpro_jpeg_decode(const uint8_t *data, size_t len, int denom, uint8_t *out, size_t out_len,
                       uint32_t *width, uint32_t *height, char *message, size_t message_len) {
    struct jpeg_decompress_struct cinfo;
    struct pixpro_jpeg_error err;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.message = message;
    err.message_len = message_len;
    if (message_len > 0) message[0] = '\0';
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return PIXPRO_JPEG_ERROR;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return PIXPRO_JPEG_UNSUPPORTED_COLOUR;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)denom;
    jpeg_calc_output_dimensions(&cinfo);
    *width = cinfo.output_width;
    *height = cinfo.output_height;
    if (out == NULL) {
        jpeg_destroy_decompress(&cinfo);
        return PIXPRO_JPEG_OK;
    }
    size_t row = (size_t)cinfo.output_width * 3;
    if (out_len != row * cinfo.output_height) {
        jpeg_destroy_decompress(&cinfo);
        return PIXPRO_JPEG_BUFFER_SIZE;
    }
    jpeg_start_decompress(&cinfo);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW rows[1] = {out + row * cinfo.output_scanline};
        jpeg_read_scanlines(&cinfo, rows, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return PIXPRO_JPEG_OK;
}
