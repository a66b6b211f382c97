// mtmd-topv-impl.h - internal to libmtmd: the TopV stage's state, the facts mtmd hands it, the layout table.
//
// The stage's code lives in the topv-edge tree (native/mtmd/); llama.cpp keeps only hooks (patches/):
//   mtmd.cpp        owns mtmd_context (with a mtmd_topv_state in it) and mtmd_image_tokens, and answers
//                   mtmd_topv_state_of() and mtmd_topv_image_facts_of() from them;
//   clip.cpp        answers clip_get_model() (the vision tower's hyperparameters and tensors);
//   mtmd-helper.cpp hands every image chunk to mtmd_topv_try_decode_image_chunk() before the stock decode.
#pragma once

#include "mtmd-topv.h"
#include "mtmd-helper.h"

#include <mutex>
#include <string>
#include <vector>

struct clip_ctx;

// where an image chunk sits in its picture: set by mtmd's tokenizer (the hook in mtmd.cpp's add_media calls
// mtmd_topv_place_picture for a tiled picture), kept in mtmd_image_tokens
struct mtmd_topv_picture_place {
    int32_t picture  = -1;  // the picture's index in its prompt (-1: unknown, e.g. a chunk from before the hook)
    int32_t role     = MTMD_TOPV_CHUNK_SINGLE;
    int32_t tile_x   = -1, tile_y = -1;
    int32_t tiles_x  = 0,  tiles_y = 0;
    int32_t index    = 0,  n_chunks = 1;       // among the picture's image chunks, decode order
    int32_t n_picture_tokens     = 0;          // all image tokens of the picture
    int32_t n_overview_tokens    = 0;          // the overview chunk's tokens (0: none)
    int32_t n_tile_tokens_before = 0;          // tokens of the picture's tiles decoded before this chunk
};

// fills the places of one picture's image chunks, given in decode order with their token counts: tiles_x x tiles_y
// tiles in row-major order, and the overview first or last
void mtmd_topv_place_picture(mtmd_topv_picture_place * const * places, const uint32_t * n_tokens, size_t n_chunks,
                             int32_t tiles_x, int32_t tiles_y, bool overview_first, int32_t picture);

// what mtmd knows of an image chunk, read off its private structs by the hook in mtmd.cpp
struct mtmd_topv_image_facts {
    const clip_ctx * ctx_v;        // the vision tower
    int32_t  proj_type;            // enum projector_type (clip-impl.h)
    int32_t  pos_type;             // mtmd's position type: 0 normal, 1 M-RoPE, 2 HunyuanVL
    uint32_t nx, ny;               // mtmd_image_tokens nx, ny (ordinary RoPE models: often n_tokens x 1)
    uint32_t n_tokens;
    uint32_t n_temporal_merge;
    size_t   n_entries;            // preprocessed images in the chunk (1: one picture, no slices or frames)
    int32_t  entry_nx, entry_ny;   // pixel size of the first preprocessed image
    mtmd_topv_picture_place place; // where the chunk sits in its picture
};

// what mtmd_topv_chunk_n_kept needs of a chunk's layout, remembered per chunk shape and text model: llama-server
// asks for every image of a prompt on every generated token, and resolving a layout walks all of its tokens
struct mtmd_topv_layout_counts {
    mtmd_topv_image_facts facts;
    const llama_model *   model = nullptr;
    bool    prunable      = false; // the layout table prunes chunks of these facts
    int32_t n_grid        = 0;
    int32_t n_always_kept = 0;
};

struct mtmd_topv_state {
    mtmd_topv_params params = mtmd_topv_default_params();
    mtmd_topv_stats  stats  = {};
    std::string      reason; // why the last image was not pruned (empty when it was)
    // why mtmd refuses images with this text model (empty: it does not): the projector's marker tokens are not in
    // its vocabulary, i.e. the mmproj is another family's (set at mtmd init, mtmd_topv_set_missing_markers)
    std::string      image_input_error;

    // buffers of the last image, reused across images
    std::vector<float>   source;    // n_grid x n_embd
    std::vector<float>   target;    // n_grid x n_embd
    std::vector<float>   kept_embd; // n_kept x row width
    std::vector<int32_t> kept;      // chunk token indices, ascending
    std::vector<double>  scores;    // n_grid
    std::vector<int32_t> grid_kept; // pass output: indices into the grid tokens

    // layout counts of recent chunk shapes (mtmd_topv_chunk_n_kept), for const callers too
    mutable std::mutex                           layout_memo_mutex;
    mutable std::vector<mtmd_topv_layout_counts> layout_memo; // the most recent last, at most 16
};

// the reason mtmd refuses images: the projector (enum projector_type) marks images and slices with these token
// texts, which the text model's vocabulary lacks (called by mtmd's init, which finds them; mtmd-topv-layouts.cpp)
void mtmd_topv_set_missing_markers(mtmd_topv_state * st, int32_t proj_type, const std::vector<std::string> & missing);

// defined in mtmd.cpp (the hooks)
mtmd_topv_state       * mtmd_topv_state_of(mtmd_context * ctx);
const mtmd_topv_state * mtmd_topv_state_of(const mtmd_context * ctx);
bool mtmd_topv_image_facts_of(const mtmd_context * ctx, const mtmd_image_tokens * img, mtmd_topv_image_facts * out);
const clip_ctx * mtmd_topv_vision_of(const mtmd_context * ctx); // the vision tower, nullptr if none

// What the layout table says about one image chunk: which of its tokens form the grid the pass sees (and where),
// which tokens are structural (always kept), and how wide a row of the chunk's embedding is.
struct mtmd_topv_chunk_layout {
    int32_t grid_w = 0, grid_h = 0;
    std::vector<int32_t> grid_tokens;   // chunk token index of each grid token, ascending
    std::vector<int32_t> pos_x, pos_y;  // its grid cell
    std::vector<int32_t> always_kept;   // structural tokens inside the chunk (row breaks, begin/end), ascending
    int64_t row_width = 0;              // floats per token in the chunk's embedding (n_embd_inp, wider with deepstack)
    int64_t n_embd = 0;                 // floats per probed feature (the text model's hidden size)
    int32_t n_deepstack = 0;            // deepstack slices after the main n_embd of each row (Qwen3-VL)
    std::string target_node = "ffn_norm"; // the text architecture's post-attention norm (pass target), without "-<il>"
    bool recurrent = false;             // the memory has a recurrent part (hybrid models): saved/restored around the probe
    bool spatial   = true;              // false: the tokens are not cells of a picture (resampler queries): the pass
                                        // runs without its spatial terms, on a 1-row grid
    mtmd_topv_picture_place place;      // the chunk's place in its picture
};

// grid tokens the stage keeps of this chunk: its share of the picture's budget (one chunk: keep of its grid)
int64_t mtmd_topv_chunk_budget(const mtmd_topv_params & params, const mtmd_topv_chunk_layout & layout);
// the same from the counts alone: a chunk at `place` with n_grid grid and n_always_kept structural tokens
int64_t mtmd_topv_chunk_budget(const mtmd_topv_params & params, const mtmd_topv_picture_place & place,
                               int64_t n_grid, int64_t n_always_kept);

// names of the graph nodes the probe reads for layer `layer`: the layer's input (empty: the embeddings) and output
void mtmd_topv_probe_nodes(const mtmd_topv_chunk_layout & layout, int32_t layer, std::string * source, std::string * target);

// video frames in a chunk of these facts: n_temporal_merge consecutive frames that an M-RoPE encoder (Qwen-VL)
// merges in time into one grid, or 1 (a picture, or one frame)
int32_t mtmd_topv_merged_frames(const mtmd_topv_image_facts & facts);

// Fills `out` and returns true when the table prunes the chunk of these facts (mtmd_topv_image_facts_of);
// otherwise returns false with the reason.
bool mtmd_topv_resolve_layout(const mtmd_topv_image_facts & facts, const llama_model * model,
                              mtmd_topv_chunk_layout * out, std::string * reason);

// Decodes an encoded image chunk with pruning. Returns false when the stage does not handle the chunk
// (pruning off, unknown layout, ...): the caller then decodes it unpruned, as stock llama.cpp does, and
// reports the time with mtmd_topv_note_unpruned(). When it returns true, *ret is the decode result.
bool mtmd_topv_try_decode_image_chunk(mtmd_context * ctx, llama_context * lctx, const mtmd_input_chunk * chunk,
                                      const float * embd, llama_pos n_past, llama_seq_id seq_id, int32_t n_batch,
                                      llama_pos * new_n_past, mtmd_helper_post_decode_callback callback,
                                      void * user_data, int32_t * ret);

void mtmd_topv_note_unpruned(mtmd_context * ctx, double decode_ms);
