"""The 16 non-linear IQ4 levels (ggml's kvalues_iq4nl), shared by IQ4_NL and IQ4_XS: the
quantizers, the block decoders and the Numba dots all read this one table."""
import numpy as np

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69,
                          89, 113], dtype=np.int8)
