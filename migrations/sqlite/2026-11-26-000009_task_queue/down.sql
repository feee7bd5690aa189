DROP TABLE task_queue;
