// mtmd-topv.h - the TopV stage of llama.cpp's multimodal library: public C API.
//
// Part of topv-edge, compiled into libmtmd by the llama.cpp patch (patches/02-mtmd-topv-hooks.patch includes this
// header at the end of tools/mtmd/mtmd.h). The pass itself is in topv.h.
//
// When enabled, mtmd_helper_decode_image_chunk() - and so mtmd_helper_eval_chunk_single(),
// mtmd_helper_eval_chunks(), llama-mtmd-cli and llama-server - decodes each image in two steps:
// a probe decode of all its tokens through layers 0..layer+1 only (llama_set_n_layer_limit: on every backend)
// that reads the features of layer `layer`, its KV cells removed after it, and a decode of only the tokens the pass keeps, at their
// original positions. n_past advances exactly as without pruning. Which chunks can be pruned, and how
// their tokens map to a grid, is decided by the layout table (mtmd-topv-layouts.cpp); images of any
// other layout are decoded unpruned (stats.result says why). Nothing is ever pruned wrongly.
#pragma once

#include "mtmd.h"
#include "topv.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct mtmd_topv_params {
    bool    enabled;    // false: the stock decode path
    float   keep_ratio; // fraction of each picture's tokens to keep, in (0, 1]; used when keep_count == 0
    int32_t keep_count; // > 0: keep this many tokens of each picture (at most all of them)
    int32_t layer;      // Li: compare the input of layer Li with its post-attention norm output (0 <= Li < n_layer - 1)
    struct topv_params pass; // the pass parameters and method, topv_default_params()
    // diagnostic only (how much do original positions matter?): decode the kept tokens at consecutive
    // positions and let the text follow them, as a naive pruner would; ignored by M-RoPE models
    bool    renumber_positions;
    // tiled pictures (an overview and tiles, each its own chunk): keep applies to the whole picture, and its budget
    // is spread over the chunks in proportion to their tokens, the overview's counted this many times (> 0; 1: every
    // chunk the same ratio; INFINITY, the default: the overview whole when the budget allows, the tiles share the
    // rest; docs/tiled.md)
    float   overview_weight;
};

// where an image chunk sits in its picture
enum mtmd_topv_chunk_role {
    MTMD_TOPV_CHUNK_SINGLE   = 0, // the picture is this one chunk
    MTMD_TOPV_CHUNK_OVERVIEW = 1, // the downscaled whole picture of a tiled picture (thumbnail, global image)
    MTMD_TOPV_CHUNK_TILE     = 2, // one tile (slice) of a tiled picture
};

enum mtmd_topv_result {
    MTMD_TOPV_PRUNED = 0,          // the image was pruned
    MTMD_TOPV_DISABLED,            // pruning is off
    MTMD_TOPV_KEEP_ALL,            // keep >= the image's tokens: decoded unpruned (no probe)
    MTMD_TOPV_UNSUPPORTED_LAYOUT,  // the layout table declines this chunk (mtmd_topv_get_reason() says why)
    MTMD_TOPV_UBATCH_TOO_SMALL,    // the probe needs the whole image in one ubatch (n_batch, n_ubatch >= tokens)
    MTMD_TOPV_LAYER_OUT_OF_RANGE,  // layer >= n_layer - 1
    MTMD_TOPV_PROBE_FAILED,        // the probe did not see the layer's features: decoded unpruned
    MTMD_TOPV_PASS_FAILED,         // the pass returned an error (e.g. non-finite features): decoded unpruned
};

// what happened to the last image decoded through mtmd_helper_decode_image_chunk()
struct mtmd_topv_stats {
    int32_t result;   // enum mtmd_topv_result
    int32_t n_tokens; // the image's tokens
    int32_t n_kept;   // tokens decoded into the KV cache (n_tokens unless pruned)
    int32_t grid_w;   // the token grid (0 when unknown)
    int32_t grid_h;
    int32_t n_embd;   // width of the probed features
    double  probe_ms;
    double  pass_ms;
    double  decode_ms; // decode of the kept tokens (or of all of them when not pruned)
    // the highest layer index of any graph node the scheduler computed during the probe (node names "...-<il>"),
    // -1 without a probe: at most layer + 1, on every backend and offload split (a test hook)
    int32_t probe_max_layer;
    int32_t n_grid;        // the image's grid tokens (what keep applies to; scores and features have this many rows)
    int32_t n_always_kept; // structural tokens inside the chunk, kept on top of the grid's (Pixtral's [IMG_BREAK])
    // the chunk's place in its picture (tiled pictures have several chunks, each decoded and reported on its own)
    int32_t picture;          // the picture's index among the prompt's pictures (-1: unknown)
    int32_t role;             // enum mtmd_topv_chunk_role
    int32_t tile_x, tile_y;   // the tile's column and row (-1 unless role is TILE)
    int32_t tiles_x, tiles_y; // the picture's grid of tiles (0 x 0 for a single chunk)
    int32_t chunk_index;      // the chunk among the picture's image chunks, in decode order
    int32_t n_chunks;         // image chunks of the picture
    int32_t n_picture_tokens; // image tokens of the whole picture (what keep applies to)
    int32_t n_budget;         // grid tokens this chunk was given of the picture's budget (0 when not pruning)
    int32_t n_frames;         // video frames in the chunk: 2 when a Qwen-VL encoder merged two in time, else 1
};

// Lifetimes of the pointers the functions below return:
// - mtmd_topv_get_kept, _get_scores, _get_features, _get_reason: owned by ctx and about the last image chunk decoded
//   through mtmd_helper_decode_image_chunk(); valid until the next image chunk is decoded with ctx (pruned or not: the
//   buffers are reused and may move) or mtmd_free(ctx), whichever comes first. mtmd_topv_set_params() and
//   mtmd_topv_enable() leave them valid. Copy what you keep longer; do not read them while another thread decodes.
// - mtmd_topv_image_input_error: owned by ctx, fixed at mtmd_init_from_file(), valid until mtmd_free(ctx).
// - mtmd_topv_format_stats: returns the caller's buf.
// - mtmd_topv_result_string, _chunk_role_name and the strings of struct mtmd_topv_layout_info: static, valid forever.

MTMD_API struct mtmd_topv_params mtmd_topv_default_params(void);
// returns 0, or a topv_status code (the parameters are then not changed); see topv_status_string()
MTMD_API int32_t mtmd_topv_set_params(mtmd_context * ctx, const struct mtmd_topv_params * params);
MTMD_API struct mtmd_topv_params mtmd_topv_get_params(const mtmd_context * ctx);
// turn pruning on with the default pass parameters and the method of that name (topv_method_name(); NULL: the
// default): keep_count > 0 keeps that many tokens per image, otherwise keep_ratio in (0, 1]; layer < 0 is the default
// layer (mtmd_topv_default_params), and the layer is checked against the text model's layers when `model` is given. Returns 0 or a topv_status code, and logs either (an unknown
// method name with the known ones, a layer out of range with the model's range). For llama-mtmd-cli and llama-server.
MTMD_API int32_t mtmd_topv_enable(mtmd_context * ctx, const struct llama_model * model, float keep_ratio,
                                  int32_t keep_count, int32_t layer, const char * method);
MTMD_API const char * mtmd_topv_result_string(int32_t result);
// "single", "overview", "tile" (a mtmd_topv_chunk_role), "unknown" otherwise
MTMD_API const char * mtmd_topv_chunk_role_name(int32_t role);
// the tokens the stage will decode for this image chunk with the current parameters (its share of the picture's
// budget plus its structural tokens), or all of them when it would not prune it; -1 for a chunk that is not an
// image. For callers that size the KV cache before decoding (the probe still needs the whole chunk for a moment).
MTMD_API int32_t mtmd_topv_chunk_n_kept(const mtmd_context * ctx, const struct llama_model * model,
                                        const mtmd_input_chunk * chunk);
// the KV cells this image chunk takes once decoded in `lctx`: mtmd_topv_chunk_n_kept, or all of its tokens where
// lctx makes the stage decode it whole (a probe whose image exceeds its n_batch / n_ubatch, a layer out of the
// model's range); -1 for a chunk that is not an image. For callers whose context exists (llama-server's slots).
MTMD_API int32_t mtmd_topv_chunk_n_cells(const mtmd_context * ctx, const struct llama_context * lctx,
                                         const mtmd_input_chunk * chunk);
// true when the stage decodes an image whole before pruning it (the probe: a layer above 0, or a method that reads
// the layer's output): for that moment the KV cache holds every token of the image, and the image must fit one
// ubatch (otherwise it is decoded unpruned). False when pruning is off or no probe runs (the default).
MTMD_API bool mtmd_topv_probes(const mtmd_context * ctx);
MTMD_API struct mtmd_topv_stats mtmd_topv_get_stats(const mtmd_context * ctx);
// the sentence that explains the last image's result (the layout table's reason when it declined), never NULL
MTMD_API const char * mtmd_topv_get_reason(const mtmd_context * ctx);
// one line describing the parameters ("topv: pruning images to 0.25 of their tokens at layer 0 (divprune)", or
// "topv: pruning is off"), for logs; returns buf
MTMD_API const char * mtmd_topv_format_params(const mtmd_context * ctx, char * buf, size_t size);
// one line describing the last image ("topv: 576 image tokens -> 144 kept ..."), for logs; returns buf
MTMD_API const char * mtmd_topv_format_stats(const mtmd_context * ctx, char * buf, size_t size);
// the last pruned image: kept chunk token indices (stats.n_kept, ascending, structural ones included), TopV scores
// (stats.n_grid, grid order) and the probed source/target features of the grid tokens (stats.n_grid x stats.n_embd,
// row-major); NULL when the last image was not pruned, and the target NULL when no probe ran (layer 0 and a method
// that reads no target: topv_method_reads)
MTMD_API const int32_t * mtmd_topv_get_kept    (const mtmd_context * ctx);
MTMD_API const double  * mtmd_topv_get_scores  (const mtmd_context * ctx);
MTMD_API const float   * mtmd_topv_get_features(const mtmd_context * ctx, bool target);
// whether this mmproj belongs with this text model: the projector's image marker tokens must be in the model's
// vocabulary (mtmd_topv_image_input_error), and the layout table's text architectures and rope type must match.
// 0 when it does; otherwise non-zero and a sentence in reason (if given).
MTMD_API int32_t mtmd_topv_check_model(const mtmd_context * ctx, const struct llama_model * model,
                                       char * reason, size_t size);
// why mtmd_tokenize() refuses images with this context's text model, NULL when it does not: the mmproj's projector
// marks images with tokens the model's vocabulary lacks (an mmproj of another family; stock llama.cpp aborted in the
// decode). Decided at mtmd_init_from_file(); valid as long as ctx.
MTMD_API const char * mtmd_topv_image_input_error(const mtmd_context * ctx);

// the layout table (mtmd-topv-layouts.cpp), one entry per vision/audio projector type of this llama.cpp: which
// families it serves, whether the stage prunes it and how it reads the grid, or why it declines it
struct mtmd_topv_layout_info {
    const char * projector;   // the projector type as the mmproj names it (clip.projector_type)
    const char * families;    // the models people run with it
    const char * text_archs;  // comma-separated text architectures it belongs with; NULL: any not owned by another entry
    bool         prunes;      // the stage prunes single pictures of this layout
    bool         class_token_declined; // this build declines vision towers with a class embedding (patches/10 absent)
    const char * layout;      // how the chunk's tokens form the grid ("" when declined)
    const char * reason;      // why the stage declines the type (NULL when it prunes)
};
MTMD_API int32_t mtmd_topv_layout_count(void);
// false when i is out of range
MTMD_API bool mtmd_topv_layout_get(int32_t i, struct mtmd_topv_layout_info * out);

#ifdef __cplusplus
}
#endif
