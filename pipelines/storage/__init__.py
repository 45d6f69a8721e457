"""Object-storage settings shared by every engine: where S3 is and who we are, from the environment only."""
