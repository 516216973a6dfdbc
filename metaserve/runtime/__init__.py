"""Runs meta-training: the learner loop, and executors that compute task contributions locally or on Ray."""
