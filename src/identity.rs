//! Identity (room for the kiosk's 1:1 verification): face alignment to the embedding model's
//! template from landmarks, the embedding, and the match of a live face against a reference
//! photo. Same layer as `analysis`: it reads faces and models, and the verdict layer above
//! combines its answer with the others. Nothing lives here yet.
