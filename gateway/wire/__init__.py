"""The wire format and what anyone needs to check it: deterministic CBOR, COSE, Merkle trees,
identities, payloads, proofs and the verifier. Imports only gateway.core."""
