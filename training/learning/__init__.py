"""Learning proper: triplet miners, trainers, calibration of the blend, pretraining a base."""
