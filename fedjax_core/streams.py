"""PRNG stream tags: the integers folded into a key to derive an
independent stream for one purpose (DESIGN.md, "Randomness").

Round-level streams are folded into the round key; client ids, folded into
the same key for the clients' keys, stay below 2^31 - 3, so the round-level
tags sit just below 2^31. Sub-streams are folded into their stream's key.
Changing a tag changes every result that draws from it.
"""

# Folded into the round key (`fold_in(fold_in(root, round), TAG)`).
AGGREGATION = 0x7fffffff   # the reduction and client-level DP
ATTACK = 0x7ffffffe        # who is Byzantine, and their messages
DOWNLINK = 0x7ffffffd      # the broadcast's compression
GOSSIP = 0x7ffffffc        # decentralized rounds: failures, peers, attacks
PERSONAL_EVAL = 0x7ffffffb  # the clients' keys of a personal evaluation

# Folded into the AGGREGATION key.
SECURE_SUM = 0             # secure aggregation's masks
DP_NOISE = 1               # the Gaussian noise on the sum
DP_COUNT = 2               # adaptive clipping's noisy unclipped count

# Folded into the ATTACK key.
BYZANTINE_MASK = 0
MODEL_ATTACK = 1

# Folded into the GOSSIP key.
NODE_FAILURE = 0
LINK_FAILURE = 1           # the topology's links and time-varying peers
PEER_ATTACK = 2            # Byzantine nodes' per-edge messages

# Folded into a client's key for the round.
COMPRESSION = 0x636f6d70   # the uplink compressor's randomness
RQM = 0x72716d             # randomized quantization of the message
# Folded into a local step's key.
AUGMENT = 0x617567

# Host-side numpy streams, `default_rng((seed, round, TAG))`.
SECAGG_PROTOCOL = 0x5ec    # secure aggregation's pair seeds and dropouts
# Host-side numpy streams of a client, `default_rng((seed, round, client,
# TAG))`.
PERSONAL_BATCHES = 0xf7e   # the batches a personal evaluation adapts on
# Folded into secure aggregation's key.
SECAGG_PAIR_MASK = 0x9a17
SECAGG_SELF_MASK = 0x5e1f
# Host-side numpy streams of a run, `default_rng((seed, TAG))`.
EVAL_NODES = 0xe7a1        # which nodes a decentralized run evaluates
EVAL_CLIENTS = 0xe7a2      # which clients a personal evaluation scores
HOLDOUT_CLIENTS = 0x401d   # which clients never train (new clients)
SPLIT_TEST_ROWS = 0x6846   # a single-split dataset's per-client test rows
TEST_SUBSAMPLE = 0x7e57    # which rows of the global test split are kept
# Folded into the root key `key(seed)`.
BYZANTINE_NODES = 0xb72    # which nodes of a decentralized run are Byzantine
